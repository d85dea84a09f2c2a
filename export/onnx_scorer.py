"""TRAIL from an ONNX bundle behind the `models.scoring.Scorer` interface, for the stream (no torch here).

`load_bundle_scorer(NAME|DIR)` reads every bundle file once and checks it (`export.bundle.verify_bundle`,
optionally against a pinned manifest sha256), builds the ONNX Runtime sessions (`export.runtime`) and the
tokenizer from those verified bytes (never re-reading the files), and returns a `BundleScorer`: forecast()
for every row through the text graph (items not seen before) and the forecast graph, explain() for a few
rows through greedy decoding with the step graph; `prepare_texts` reads catalogue texts ahead of need, and
`attach_vector_store` gives it a persistent store of text vectors, seeded with the bundle's catalogue vectors
(`export.catalogue_vectors`) when it has some. Prompts are built and decoded by the code
`models.trail_scorer.TrailScorer` uses (`models.prompts`). Importing this module must not import torch
(tests/test_export.py checks it).
"""

from __future__ import annotations

import numpy as np

from export.bundle import VerifiedBundle, resolve_bundle_dir, verify_bundle
from export.catalogue_vectors import CatalogueVectors, verified_catalogue_vectors
from export.runtime import TrailRuntime
from export.text_vector_store import StoredVectors, manifest_text_vector_key
from models.features import FeatureBatch, numeric_features
from models.prompts import PromptTokens
from models.rationales import evidence_text
from models.text_vectors import text_digest


class BundleScorer:
    """A TRAIL bundle as a `models.scoring.Scorer` (name, version, sha256 from the manifest).

    `manifest_sha256` is the sha256 of the manifest's bytes, the value `--scorer-sha256` pins.
    """

    def __init__(self, runtime: TrailRuntime, tokens: PromptTokens, manifest: dict,
                 forecast_chunk: int = 256, explain_chunk: int = 64, manifest_sha256: str = "",
                 catalogue: CatalogueVectors | None = None) -> None:
        self.runtime = runtime
        self.catalogue = catalogue
        self.text_key = manifest_text_vector_key(manifest)   # what the text vectors of this bundle are stored under
        self.tokens = tokens
        self.manifest = manifest
        self.manifest_sha256 = manifest_sha256
        self.config = manifest["trail_config"]
        self.name = manifest["name"]
        self.version = manifest["version"]
        self.sha256 = manifest["sha256"]
        self.forecast_chunk = forecast_chunk
        self.explain_chunk = explain_chunk
        self.max_new_tokens = int(self.config["max_new_tokens"])

    @property
    def provider(self) -> str:
        """The execution provider the sessions really run on (e.g. CPUExecutionProvider)."""
        return self.runtime.report.active

    def _check_batch(self, batch: FeatureBatch) -> None:
        if batch.spec.n_buckets != self.config["n_buckets"]:
            raise ValueError(
                f"{self.name} was trained on {self.config['n_buckets']} buckets per window, the batch has "
                f"{batch.spec.n_buckets}; score with the window the model was trained for or retrain it"
            )

    def features(self, batch: FeatureBatch) -> np.ndarray:
        return numeric_features(batch.bucket_counts, batch.signals, batch.spec.window_slots)

    def text_vectors(self, texts: list[str]) -> np.ndarray:
        return self.runtime.text_vectors(texts, self.tokens.text_rows, self.forecast_chunk)

    def prepare_texts(self, texts: list[str], limit: int | None = None) -> tuple[int, list[str]]:
        """Read at most `limit` texts without a vector, ahead of any step: (read, texts still without one)."""
        return self.runtime.prepare_texts(texts, self.tokens.text_rows, self.forecast_chunk, limit)

    def attach_vector_store(self, store: StoredVectors) -> int:
        """Keep text vectors in `store` (this bundle's key) and seed it with the bundle's catalogue vectors;
        returns how many of those were not stored yet."""
        if store.key != self.text_key:
            raise ValueError(f"a text vector store for key {store.key[:12]} cannot serve bundle {self.name} "
                             f"(key {self.text_key[:12]}); open the store's view with the scorer's text_key")
        self.runtime.vector_store = store
        if self.catalogue is None:
            return 0
        return store.put_missing([text_digest(t) for t in self.catalogue.texts], self.catalogue.vectors)

    @property
    def texts_read(self) -> int:
        """Texts run through the text graph because a step needed them (not read ahead)."""
        return self.runtime.texts_read

    @property
    def texts_read_ahead(self) -> int:
        return self.runtime.texts_read_ahead

    def forecast_log1p(self, features: np.ndarray, texts: list[str]) -> np.ndarray:
        return self.runtime.forecast_log1p(features, self.text_vectors(texts))

    def forecast(self, batch: FeatureBatch) -> np.ndarray:
        self._check_batch(batch)
        if not len(batch):
            return np.zeros(0)
        return np.maximum(0.0, np.expm1(self.forecast_log1p(self.features(batch), batch.texts)))

    def explanation_rows(self, batch: FeatureBatch, forecast: np.ndarray, index: np.ndarray) -> list[list[int]]:
        """Prompt + evidence line (signals and the forecast) token ids of rows `index`."""
        lines = [evidence_text(batch.signals_of(int(i)), float(forecast[i]), batch.spec.bucket_s) for i in index]
        return self.tokens.explanation_rows([batch.texts[i] for i in index], lines)

    def explain(self, batch: FeatureBatch, forecast: np.ndarray, index: np.ndarray,
                max_new_tokens: int | None = None) -> list[str]:
        self._check_batch(batch)
        index = np.asarray(index, dtype=np.int64)
        if not len(index):
            return []
        rows = self.explanation_rows(batch, forecast, index)
        features = self.features(batch)[index]
        cap = max_new_tokens or self.max_new_tokens
        texts: list[str] = []
        for start in range(0, len(rows), self.explain_chunk):
            end = start + self.explain_chunk
            generated = self.runtime.generate(rows[start:end], features[start:end], cap)
            texts += [self.tokens.decode(ids) for ids in generated]
        return texts


def tokenizer_from_bytes(data: bytes):
    """A `tokenizers.Tokenizer` from the verified bytes of a tokenizer.json; no transformers, no torch.

    Byte-level BPE: transformers' decode does no extra clean-up for it, so decoding matches the torch path."""
    from tokenizers import Tokenizer

    return Tokenizer.from_buffer(data)


def scorer_from_verified(bundle: VerifiedBundle, providers: str = "auto", intra_op_threads: int = 0,
                         spin: bool = False) -> BundleScorer:
    """A Scorer built only from the verified bytes in `bundle` (the files on disk are not opened again)."""
    config = bundle.manifest["trail_config"]
    tokenizer = tokenizer_from_bytes(bundle.runtime_bytes("tokenizer"))
    tokens = PromptTokens(tokenizer, config["bucket_s"], config["max_text_tokens"])
    catalogue = verified_catalogue_vectors(bundle)
    runtime = TrailRuntime.open(bundle, providers, intra_op_threads, spin)
    return BundleScorer(runtime, tokens, bundle.manifest, manifest_sha256=bundle.manifest_sha256,
                        catalogue=catalogue)


def load_bundle_scorer(name_or_path: str, providers: str = "auto", intra_op_threads: int = 0,
                       spin: bool = False, expected_sha256: str | None = None) -> BundleScorer:
    """A verified bundle (NAME -> artifacts/bundles/NAME, or a folder) as a Scorer; providers auto|cpu|cuda.

    intra_op_threads: onnxruntime threads per session (0: one per core); spin: let idle threads busy-wait.
    expected_sha256: the pinned manifest sha256; another bundle raises `export.bundle.BundlePinError`.
    """
    bundle = verify_bundle(resolve_bundle_dir(name_or_path), expected_sha256)
    return scorer_from_verified(bundle, providers, intra_op_threads, spin)
