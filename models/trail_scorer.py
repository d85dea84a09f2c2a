"""TRAIL behind the `Scorer` interface: batched forecasts and batched greedy explanations, plus saving/loading.

A trained model lives in ``artifacts/models/NAME/`` (or any folder): ``model.safetensors`` (LoRA already
merged), ``config.json`` (`TrailConfig`), ``tokenizer/``, ``MODEL_CARD.md`` and ``model_card.json`` (data,
base, hyper-parameters, metrics, sha256 of each weight file). `load_trail_scorer` refuses weights whose
sha256 does not match the card. Model: arXiv 2602.04225 (see `models.trail`). No training and no Kafka here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from infra.integrity import sha256_of
from infra.paths import MODELS_DIR, resolve_artifact
from models.features import FeatureBatch
from models.prompts import PromptTokens, greedy_decode
from models.rationales import evidence_text
from models.text_vectors import TextVectorCache, read_in_length_order
from models.trail import TrailConfig, TrailModel, left_pad, numeric_features

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
TOKENIZER_SUBDIR = "tokenizer"


class TrailScorer:
    """A TRAIL model as a `models.scoring.Scorer`: forecast() for every row, explain() for a few."""

    def __init__(self, model: TrailModel, tokenizer, name: str, version: str, sha256: str,
                 forecast_chunk: int = 128, explain_chunk: int = 32) -> None:
        self.model = model.eval()
        self.config = model.config
        self.tokenizer = tokenizer
        self.tokens = PromptTokens(tokenizer.backend_tokenizer, model.config.bucket_s, model.config.max_text_tokens)
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.forecast_chunk = forecast_chunk
        self.explain_chunk = explain_chunk
        self.text_cache = TextVectorCache()

    def _check_batch(self, batch: FeatureBatch) -> None:
        if batch.spec.n_buckets != self.config.n_buckets:
            raise ValueError(
                f"{self.name} was trained on {self.config.n_buckets} buckets per window, the batch has "
                f"{batch.spec.n_buckets}; score with the window the model was trained for or retrain it"
            )

    def features(self, batch: FeatureBatch) -> np.ndarray:
        return numeric_features(batch.bucket_counts, batch.signals, batch.spec.window_slots)

    @torch.inference_mode()
    def text_vectors(self, texts: list[str]) -> np.ndarray:
        """Item text vectors [n, d] (float32), read once per distinct text and cached."""
        if not texts:
            return np.zeros((0, self.model.lm.config.hidden_size), dtype=np.float32)
        return self.text_cache.vectors(texts, self._read_texts)

    def _read_texts(self, texts: list[str]) -> np.ndarray:
        return read_in_length_order(self.tokens.text_rows(texts), self.forecast_chunk,
                                    lambda part: self.model.read_text(*left_pad(part)).float().numpy())

    @torch.inference_mode()
    def forecast_log1p(self, features: np.ndarray, texts: list[str]) -> np.ndarray:
        """log1p next-bucket counts from the numeric features and the (cached) item text vectors."""
        vecs = torch.from_numpy(self.text_vectors(texts))
        log1p, _ = self.model.forecast(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), vecs)
        return log1p.double().numpy()

    def forecast(self, batch: FeatureBatch) -> np.ndarray:
        self._check_batch(batch)
        if not len(batch):
            return np.zeros(0)
        return np.maximum(0.0, np.expm1(self.forecast_log1p(self.features(batch), batch.texts)))

    def explain(self, batch: FeatureBatch, forecast: np.ndarray, index: np.ndarray) -> list[str]:
        self._check_batch(batch)
        index = np.asarray(index, dtype=np.int64)
        if not len(index):
            return []
        lines = [evidence_text(batch.signals_of(int(i)), float(forecast[i]), batch.spec.bucket_s) for i in index]
        rows = self.tokens.explanation_rows([batch.texts[i] for i in index], lines)
        return self.explain_rows(rows, self.features(batch)[index])

    def explain_rows(self, rows: list[list[int]], features: np.ndarray) -> list[str]:
        """Greedy explanations of explanation rows (prompt + evidence), `explain_chunk` rows at a time."""
        texts: list[str] = []
        for start in range(0, len(rows), self.explain_chunk):
            texts += self.generate(rows[start:start + self.explain_chunk], features[start:start + self.explain_chunk])
        return texts

    @torch.inference_mode()
    def generate(self, rows: list[list[int]], features: np.ndarray) -> list[str]:
        """Greedy explanations of token rows (`models.prompts.greedy_decode` over the model's cached step), at most
        config.max_new_tokens tokens each."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.lm.config)

        def step(feeds: dict[str, np.ndarray], keep: np.ndarray | None) -> np.ndarray:
            inputs = {name: torch.from_numpy(value) for name, value in feeds.items()}
            logits, _ = self.model.next_token_logits(inputs["input_ids"], inputs["attention_mask"],
                                                     inputs["position_ids"], inputs["numeric_prefix"], cache,
                                                     inputs.get("context_ids"))
            return logits.numpy()

        generated = greedy_decode(step, rows, features, self.config.n_prefix, self.config.max_new_tokens,
                                  self.config.copy_path, drop_finished=False)
        return [self.tokens.decode(ids) for ids in generated]


# --- saving and loading ---------------------------------------------------------------------------------------


def resolve_model_dir(name_or_path: str) -> Path:
    """A NAME means artifacts/models/NAME; a path is a folder (`infra.paths.resolve_artifact`)."""
    return resolve_artifact(name_or_path, MODELS_DIR)


def sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, in place (same length, same tensors).

    safetensors writes the metadata from a Rust HashMap, whose order changes from process to process, so
    the same tensors gave files with different sha256s; sorted, the same weights give the same bytes.
    """
    with path.open("r+b") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > header_len:
            raise ValueError(f"{path}: the re-serialised safetensors header is {len(text)} bytes, the original "
                             f"{header_len}; leave this file as it is")
        f.seek(8)
        f.write(text.ljust(header_len, b" "))   # safetensors pads headers with spaces


def save_trail_model(model: TrailModel, tokenizer, out_dir: Path, card: dict,
                     render_card: Callable[[dict], str]) -> dict:
    """Weights (safetensors), config, tokenizer and the model card (sha256 filled in) into `out_dir`."""
    from safetensors.torch import save_model

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_FILE
    save_model(model, str(weights), metadata={"format": "pt", "model": "trail", "base": model.config.base})
    sort_safetensors_metadata(weights)
    (out_dir / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(out_dir / TOKENIZER_SUBDIR)
    sha = sha256_of(weights)
    card = {**card, "weights": {WEIGHTS_FILE: {"sha256": sha, "bytes": weights.stat().st_size}},
            "version": sha[:12]}
    (out_dir / CARD_JSON).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (out_dir / CARD_MD).write_text(render_card(card))
    return card


def load_trail_model(name_or_path: str) -> tuple[TrailModel, object, dict, Path]:
    """(model, tokenizer, card, folder) after checking every weight file's sha256 against the card."""
    from safetensors.torch import load_model
    from transformers import AutoTokenizer

    folder = resolve_model_dir(name_or_path)
    card_path = folder / CARD_JSON
    if not card_path.exists():
        raise FileNotFoundError(
            f"no TRAIL model at {folder} ({CARD_JSON} missing); train one with "
            f"`trail train --dataset ml-100k --base tiny --out {folder}` or pass an existing NAME or folder"
        )
    card = json.loads(card_path.read_text())
    for file_name, entry in card.get("weights", {}).items():
        actual = sha256_of(folder / file_name)
        if actual != entry["sha256"]:
            raise ValueError(
                f"{folder / file_name}: sha256 {actual} does not match the model card ({entry['sha256']}); "
                "the weights were changed or corrupted — retrain or restore them"
            )
    if WEIGHTS_FILE not in card.get("weights", {}):
        raise ValueError(f"{card_path} lists no sha256 for {WEIGHTS_FILE}; refusing unverified weights")
    config = TrailConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    model = TrailModel(config)
    try:
        load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    except RuntimeError as exc:   # e.g. weights of an older TRAIL layout (marker-state forecast head)
        raise ValueError(f"{folder / WEIGHTS_FILE} does not fit this version's TRAIL model ({exc}); "
                         f"retrain it with `trail train --base {config.base} --out {folder}`") from exc
    tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_SUBDIR)
    return model.eval(), tokenizer, card, folder


def load_trail_scorer(name_or_path: str) -> TrailScorer:
    """A trained TRAIL model as a Scorer (NAME -> artifacts/models/NAME); name e.g. "trail-tiny"."""
    model, tokenizer, card, folder = load_trail_model(name_or_path)
    sha = card["weights"][WEIGHTS_FILE]["sha256"]
    return TrailScorer(model, tokenizer, name=card.get("name", folder.name), version=card["version"], sha256=sha)
