"""Text vectors of a known catalogue inside a bundle: computed by `trail export --catalogue`, verified on load.

The file (``text_vectors.npz``, named by ``manifest["graph"]["text_vectors"]`` and listed with its sha256 like
every bundle file, so `export.bundle.verify_bundle` refuses it when changed) holds three arrays, read with
``allow_pickle=False``:

    key          the text vector key it was read with (`export.text_vector_store.text_vector_key`)
    texts_json   the texts, a UTF-8 JSON list, as uint8
    vectors      float32 [n texts, d_model], row i the vector of text i

Vectors are read by `export.runtime.read_text_rows`, the function the serving runtime reads with, from the
bundle's own text graph and tokenizer. The worker seeds its store from them (`streams.scorer_runtime`), so
its first step over that catalogue reads no text. A file whose key is not the bundle's is refused.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from export.bundle import CONFIG_FILE, TEXT_GRAPH, TOKENIZER_FILE, BundleError
from export.text_vector_store import manifest_text_vector_key, text_vector_key
from infra.integrity import sha256_of

if TYPE_CHECKING:
    from export.bundle import VerifiedBundle

CATALOGUE_VECTORS = "text_vectors.npz"
GRAPH_KEY = "text_vectors"   # manifest["graph"][GRAPH_KEY]: the file, when the bundle has one


@dataclass(frozen=True)
class CatalogueVectors:
    """Verified vectors of a catalogue's texts (row i of `vectors` is the vector of `texts[i]`)."""

    texts: list[str]
    vectors: np.ndarray


def catalogue_texts(source: str) -> list[str]:
    """The distinct non-empty item texts of `ml-100k` or of an items file (JSONL/Parquet: item_id, text|title):
    the texts a worker reads from those catalogue records."""
    from models.datasets import ML100K, load_dataset, load_items

    if source != ML100K and not Path(source).is_file():
        raise FileNotFoundError(f"catalogue {source!r}: not {ML100K} and no such file; pass {ML100K} or a "
                                ".jsonl/.parquet items file with item_id and text (or title)")
    items = load_dataset(ML100K).items if source == ML100K else load_items(Path(source))
    return [text for text in dict.fromkeys(items.values()) if text]


def read_folder_texts(folder: Path, texts: list[str], chunk: int = 256) -> np.ndarray:
    """Vectors [n, d] of `texts` read with the text graph and tokenizer in a bundle folder (export time)."""
    from export.onnx_scorer import tokenizer_from_bytes
    from export.runtime import create_session, read_text_rows
    from models.prompts import PromptTokens

    config = json.loads((folder / CONFIG_FILE).read_text())
    tokens = PromptTokens(tokenizer_from_bytes((folder / TOKENIZER_FILE).read_bytes()), config["bucket_s"],
                          config["max_text_tokens"])
    session, _ = create_session((folder / TEXT_GRAPH).read_bytes(), providers="cpu", name=TEXT_GRAPH)
    return read_text_rows(session, tokens.text_rows(texts), chunk)


def folder_text_vector_key(folder: Path) -> str:
    """The text vector key of the files in a bundle folder being exported (before its manifest exists)."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    return text_vector_key(sha256_of(folder / TEXT_GRAPH), sha256_of(folder / TOKENIZER_FILE),
                           config["max_text_tokens"])


def write_catalogue_vectors(folder: Path, texts: list[str]) -> Path:
    """Read `texts` with the folder's text graph and write them as CATALOGUE_VECTORS; returns its path."""
    vectors = read_folder_texts(folder, texts)
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(folder_text_vector_key(folder)),
             texts_json=np.frombuffer(json.dumps(texts).encode(), dtype=np.uint8),
             vectors=np.asarray(vectors, dtype=np.float32))
    path = folder / CATALOGUE_VECTORS
    path.write_bytes(buffer.getvalue())
    return path


def decode_catalogue_vectors(data: bytes, key: str, dim: int, where: str) -> CatalogueVectors:
    """The vectors in a catalogue vector file's (verified) bytes; BundleError if they are not this bundle's."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            found_key = str(arrays["key"])
            texts = json.loads(arrays["texts_json"].tobytes().decode())
            vectors = np.asarray(arrays["vectors"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{where}: not a text vector file ({type(exc).__name__}: {exc}); re-export the bundle "
                          "with `trail export MODEL --catalogue ...`") from None
    if found_key != key:
        raise BundleError(f"{where} was read with another text graph or tokenizer (key {found_key[:12]}, this "
                          f"bundle's is {key[:12]}); refusing its vectors — re-export with `trail export --catalogue`")
    if not isinstance(texts, list) or vectors.shape != (len(texts), dim):
        raise BundleError(f"{where}: {len(texts) if isinstance(texts, list) else '?'} texts and vectors of shape "
                          f"{vectors.shape}, expected one row of {dim} values per text; re-export the bundle")
    return CatalogueVectors([str(t) for t in texts], vectors)


def verified_catalogue_vectors(bundle: VerifiedBundle) -> CatalogueVectors | None:
    """The catalogue vectors of a verified bundle, or None when it has none."""
    name = bundle.manifest["graph"].get(GRAPH_KEY)
    if name is None:
        return None
    return decode_catalogue_vectors(bundle.contents[name], manifest_text_vector_key(bundle.manifest),
                                    int(bundle.manifest["graph"]["d_model"]), str(bundle.folder / name))
