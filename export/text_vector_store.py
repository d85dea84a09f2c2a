"""Text vectors on disk: a RocksDB database of (text vector key, text digest) -> vector, and the key itself.

Why: reading an item's text through the language model is the cold-start cost of a step (about 3,000 texts/s
for the tiny model, 32/s for SmolLM2 on a 2-core CPU). The worker keeps the vectors it read in
``DATA_DIR/WORKER_ID/text-vectors/`` so a restart on the same disk reads none of them again.

A vector depends on the text and on what reads it: the bundle's text graph, its tokenizer, the text length
cap and the way a text becomes token rows. `text_vector_key` hashes exactly those (from the verified
manifest), so re-exporting the same model keeps its vectors while another model's are never served: the
key prefixes every entry, and `TextVectorStore.retain` drops the entries of other keys once a bundle is in
service (one model's vectors on disk at a time). Derived data, rebuilt on demand: no changelog, no Kafka.
No onnxruntime here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import rocksdict

# bump when the token rows a vector is read from change (`models.prompts.PromptTokens.text_row`)
TEXT_VECTOR_FORMAT = "trail-text-vectors/1"
STORE_DIR = "text-vectors"
_KEY_BYTES = 32


def text_vector_key(text_graph_sha256: str, tokenizer_sha256: str, max_text_tokens: int) -> str:
    """64 hex digits naming what a text vector was read with; equal keys give equal vectors."""
    identity = f"{TEXT_VECTOR_FORMAT}\n{text_graph_sha256}\n{tokenizer_sha256}\n{int(max_text_tokens)}\n"
    return hashlib.sha256(identity.encode()).hexdigest()


def manifest_text_vector_key(manifest: dict) -> str:
    """The text vector key of a bundle, from its (verified) manifest's file hashes and text length cap."""
    graph, files = manifest["graph"], manifest["files"]
    return text_vector_key(files[graph["text"]]["sha256"], files[graph["tokenizer"]]["sha256"],
                           manifest["trail_config"]["max_text_tokens"])


class StoredVectors:
    """The vectors of one text vector key in a `TextVectorStore` (a `models.text_vectors.VectorStore`)."""

    def __init__(self, db: rocksdict.Rdict, key: str, dim: int) -> None:
        self.db = db
        self.key = key
        self.prefix = bytes.fromhex(key)
        self.dim = dim

    def get(self, digests: list[bytes]) -> list[np.ndarray | None]:
        """The vector of each text digest; None where none is stored (or a value has the wrong size)."""
        if not digests:
            return []
        values = self.db.get([self.prefix + d for d in digests])
        size = 4 * self.dim
        return [np.frombuffer(v, dtype="<f4").copy() if v is not None and len(v) == size else None for v in values]

    def put(self, digests: list[bytes], vectors: np.ndarray) -> None:
        """Store vectors [n, dim] of n texts in one write."""
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if vectors.shape != (len(digests), self.dim):
            raise ValueError(f"expected {len(digests)} text vectors of {self.dim} values, got shape {vectors.shape}")
        batch = rocksdict.WriteBatch(raw_mode=True)
        for digest, vector in zip(digests, vectors, strict=True):
            batch.put(self.prefix + digest, vector.tobytes())
        self.db.write(batch)

    def put_missing(self, digests: list[bytes], vectors: np.ndarray) -> int:
        """Store the vectors whose digest has none yet (seeding from a bundle); returns how many."""
        absent = [i for i, found in enumerate(self.get(digests)) if found is None]
        if absent:
            self.put([digests[i] for i in absent], np.asarray(vectors)[absent])
        return len(absent)


class TextVectorStore:
    """One RocksDB database of text vectors (a folder); `view(key, dim)` serves the vectors of one key."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.db = rocksdict.Rdict(str(folder), options=rocksdict.Options(raw_mode=True))

    def view(self, key: str, dim: int) -> StoredVectors:
        return StoredVectors(self.db, key, dim)

    def retain(self, key: str) -> None:
        """Delete every entry of other keys (the vectors of bundles no longer in service)."""
        prefix = int(key, 16)
        self.db.delete_range(b"", prefix.to_bytes(_KEY_BYTES, "big"))
        if prefix + 1 < 1 << (8 * _KEY_BYTES):
            self.db.delete_range((prefix + 1).to_bytes(_KEY_BYTES, "big"), b"\xff" * (2 * _KEY_BYTES + 1))

    def count(self) -> int:
        """Entries of every key (a full scan: for tests and reports, not for the step path)."""
        return sum(1 for _ in self.db.keys())

    def close(self) -> None:
        self.db.close()
