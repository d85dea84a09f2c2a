"""Item text vectors for serving and scoring: a bounded cache, reading texts in length order, and the
interface of a store that keeps vectors beyond the cache.

An item's text vector (`models.trail.TrailModel.read_text`) depends on its text alone, so every scorer
reads a text once and keeps the vector: the ONNX runtime (`export.runtime`) and the PyTorch scorer
(`models.trail_scorer`) share this cache and this reading order. A `VectorStore` (the worker's RocksDB one is
`export.text_vector_store`) holds vectors by `text_digest`, for one model's text reader. No torch and no
onnxruntime here: the caller passes the function that turns a chunk of token rows into vectors.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np


def text_digest(text: str) -> bytes:
    """The 32-byte sha256 of an item text's UTF-8: what stores key its vector by (texts are up to 2,000 chars)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class VectorStore(Protocol):
    """Text vectors of one text reader (one bundle's text graph and tokenizer), by `text_digest`."""

    def get(self, digests: list[bytes]) -> list[np.ndarray | None]:
        """The vector of each digest, None where the store has none."""
        ...

    def put(self, digests: list[bytes], vectors: np.ndarray) -> None:
        ...


def read_in_length_order(rows: list[list[int]], chunk: int,
                         read_chunk: Callable[[list[list[int]]], np.ndarray]) -> np.ndarray:
    """Vectors [n, d] of token rows, read `chunk` rows at a time sorted by length (little padding)."""
    out: np.ndarray | None = None
    order = np.argsort([len(r) for r in rows], kind="stable")
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        vecs = read_chunk([rows[i] for i in part])
        if out is None:
            out = np.zeros((len(rows), vecs.shape[1]), dtype=np.float32)
        out[part] = vecs
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


class TextVectorCache:
    """Item text -> text vector, at most `capacity` entries, the least recently used dropped first."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._vecs: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._vecs)

    def missing(self, texts: list[str]) -> list[str]:
        """Distinct texts without a vector, in first-seen order."""
        return [t for t in dict.fromkeys(texts) if t not in self._vecs]

    def put(self, texts: list[str], vecs: np.ndarray) -> None:
        for text, vec in zip(texts, vecs, strict=True):
            self._vecs[text] = vec
        while len(self._vecs) > self.capacity:
            self._vecs.popitem(last=False)

    def get(self, texts: list[str]) -> np.ndarray:
        """Vectors [n, d] of `texts` (every one must be present); marks them recently used."""
        for text in dict.fromkeys(texts):
            self._vecs.move_to_end(text)
        return np.stack([self._vecs[t] for t in texts])

    def vectors(self, texts: list[str], read: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors [n, d] of `texts` (n > 0): the missing ones read with `read(texts)` first, then looked up."""
        missing = self.missing(texts)
        if missing:
            self.put(missing, read(missing))
        return self.get(texts)
