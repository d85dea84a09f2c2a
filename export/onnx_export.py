"""`trail export`'s work: a trained TRAIL model (torch) -> a verified ONNX bundle (see `export.bundle`).

Three graphs, traced from the same `TrailModel` methods the torch scorer runs (torch.onnx.export,
dynamo=False, opset 17, dynamic batch / sequence / cache axes):

- step graph: (input_ids, attention_mask, position_ids, numeric_prefix[, context_ids], past_key_i, past_value_i
  ...) ->
  (logits at the last position [B, V], present_key_i, present_value_i ...). The prompt
  pass feeds an empty cache ([B, H, 0, Dh]) and the numeric prefix [B, P, F]; each decoding step feeds one
  token, the cache and a prefix of length 0. Only the last position's logits leave the graph (greedy
  decoding reads nothing else), which saves the [B, T, V] projection of the prompt. A model with a copy path
  (`models.trail`) also takes `context_ids` [B, total_len], the token id of every position so far.
- text graph: (input_ids, attention_mask) of "<|im_start|> item text" -> text_vec [B, d] (`read_text`);
  the server runs it once per item and caches the vector;
- forecast graph: (features [B, F0], text_vec [B, d]) -> forecast_log1p [B] (`TrailModel.forecast`), a
  small MLP: what makes forecasting 10,000 items per step cheap.

Optional dynamic int8 quantisation (onnxruntime.quantization.quantize_dynamic) of the step graph (the
generator, run ~30 times per explanation); the text and forecast graphs stay fp32, so an int8 bundle ranks
items exactly as the fp32 one (int8 moved SmolLM2's text vectors by up to 5 and its forecasts by 10 %).
The weights' sha256 is checked against the model card before export (`models.trail_scorer.load_trail_model`).
torch is imported here: this module is for exporting, never for serving.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from export.bundle import (
    BUNDLES_DIR,
    CONFIG_FILE,
    FORECAST_GRAPH,
    STEP_GRAPH,
    TEXT_GRAPH,
    TOKENIZER_FILE,
    write_manifest,
)
from models.trail import TrailModel, context_ids, left_pad, prompt_inputs

OPSET = 17
STEP_INPUTS = ("input_ids", "attention_mask", "position_ids", "numeric_prefix")


def cache_geometry(model: TrailModel) -> dict:
    """Layers, key/value heads and head size of the language model's cache."""
    cfg = model.lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {"n_layers": cfg.num_hidden_layers, "n_kv_heads": cfg.num_key_value_heads, "head_dim": head_dim,
            "vocab_size": cfg.vocab_size}


def past_names(n_layers: int) -> list[str]:
    return [f"past_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]


def present_names(n_layers: int) -> list[str]:
    return [f"present_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]


class StepGraph(nn.Module):
    """One step of TRAIL with the cache as flat tensors: what the step graph computes."""

    def __init__(self, model: TrailModel) -> None:
        super().__init__()
        self.model = model
        self.n_layers = model.lm.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, numeric_prefix, *rest):
        from transformers import DynamicCache

        context_ids, past = (rest[0], rest[1:]) if self.model.config.copy_path else (None, rest)
        cache = DynamicCache(config=self.model.lm.config)
        for layer in range(self.n_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        logits, present = self.model.next_token_logits(input_ids, attention_mask, position_ids, numeric_prefix, cache,
                                                       context_ids)
        out = [logits]
        for layer in range(self.n_layers):
            out += [present.layers[layer].keys, present.layers[layer].values]
        return tuple(out)


class TextGraph(nn.Module):
    """Item text tokens -> text vector: what the text graph computes."""

    def __init__(self, model: TrailModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.read_text(input_ids, attention_mask)


class ForecastGraph(nn.Module):
    """[numeric features, text vector] -> log1p forecast: what the forecast graph computes."""

    def __init__(self, model: TrailModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, features, text_vec):
        return self.model.forecast(features, text_vec)[0]


def example_inputs(model: TrailModel, past_len: int) -> tuple[torch.Tensor, ...]:
    """Trace inputs: two rows of different lengths (so padding is traced), a prefix and a cache of `past_len`."""
    ids, mask, pos, numeric = prompt_inputs([[1, 5, 6, 7], [1, 8]],
                                            np.zeros((2, model.config.n_item_features), np.float32),
                                            model.config.n_prefix)
    g = cache_geometry(model)
    if past_len:
        mask = torch.cat([torch.ones(2, past_len, dtype=torch.long), mask], dim=1)
        pos = pos + past_len
    past = [torch.zeros(2, g["n_kv_heads"], past_len, g["head_dim"]) for _ in range(2 * g["n_layers"])]
    if model.config.copy_path:   # the token id of every position: past, prefix placeholders, new tokens
        context = torch.cat([torch.full((2, past_len), 5, dtype=torch.long), context_ids(ids, model.config.n_prefix)],
                            dim=1)
        return (ids, mask, pos, numeric, context, *past)
    return (ids, mask, pos, numeric, *past)


def step_input_names(model: TrailModel) -> list[str]:
    """The step graph's inputs besides the cache: context_ids too when the model has a copy path."""
    return [*STEP_INPUTS, "context_ids"] if model.config.copy_path else list(STEP_INPUTS)


def export_step_graph(model: TrailModel, path: Path) -> None:
    g = cache_geometry(model)
    past, present = past_names(g["n_layers"]), present_names(g["n_layers"])
    axes = {"input_ids": {0: "batch", 1: "new_tokens"}, "attention_mask": {0: "batch", 1: "total_len"},
            "position_ids": {0: "batch", 1: "new_len"}, "numeric_prefix": {0: "batch", 1: "prefix_len"},
            "logits": {0: "batch"}, "context_ids": {0: "batch", 1: "total_len"}}
    axes.update({name: {0: "batch", 2: "past_len"} for name in past})
    axes.update({name: {0: "batch", 2: "present_len"} for name in present})
    torch.onnx.export(
        StepGraph(model), example_inputs(model, past_len=3), str(path), dynamo=False, opset_version=OPSET,
        input_names=[*step_input_names(model), *past], output_names=["logits", *present],
        dynamic_axes=axes, do_constant_folding=True,
    )


def export_text_graph(model: TrailModel, path: Path) -> None:
    ids, mask = left_pad([[1, 5, 6, 7], [1, 8]])
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "text_vec": {0: "batch"}}
    torch.onnx.export(
        TextGraph(model), (ids, mask), str(path), dynamo=False, opset_version=OPSET,
        input_names=["input_ids", "attention_mask"], output_names=["text_vec"], dynamic_axes=axes,
        do_constant_folding=True,
    )


def export_forecast_graph(model: TrailModel, path: Path) -> None:
    features = torch.zeros(2, model.config.n_item_features)
    text_vec = torch.zeros(2, model.lm.config.hidden_size)
    axes = {"features": {0: "batch"}, "text_vec": {0: "batch"}, "forecast_log1p": {0: "batch"}}
    torch.onnx.export(
        ForecastGraph(model), (features, text_vec), str(path), dynamo=False, opset_version=OPSET,
        input_names=["features", "text_vec"], output_names=["forecast_log1p"], dynamic_axes=axes,
        do_constant_folding=True,
    )


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the MatMul weights (activations quantised per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])


def default_bundle_dir(model_name: str, int8: bool) -> Path:
    return BUNDLES_DIR / (f"{model_name}-int8" if int8 else model_name)


def export_bundle(model_name_or_path: str, out_dir: Path | None = None, int8: bool = False,
                  on_stage=lambda name: None, catalogue: list[str] | None = None) -> dict:
    """Export a trained model (NAME under artifacts/models, or a folder) to a bundle; returns its manifest.

    The default bundle folder is artifacts/bundles/<model folder name>[-int8]. `catalogue`: item texts whose
    text vectors the bundle carries (`export.catalogue_vectors`), read with the exported text graph.
    """
    from models.trail_scorer import CARD_MD, TOKENIZER_SUBDIR, load_trail_model

    started = time.perf_counter()
    on_stage("load")
    model, _, card, model_dir = load_trail_model(model_name_or_path)
    model.lm.config._attn_implementation = "eager"   # plain MatMul/Softmax: traces without sdpa shortcuts
    name = card.get("name", model_dir.name)
    out_dir = Path(out_dir) if out_dir else default_bundle_dir(model_dir.name, int8)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trail-export-", dir=out_dir.parent) as tmp:
        staging = Path(tmp)
        # the tracer's warnings (constant shapes, legacy exporter) are about code paths the parity tests cover
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            on_stage("step graph")
            export_step_graph(model, staging / STEP_GRAPH)
            on_stage("text graph")
            export_text_graph(model, staging / TEXT_GRAPH)
            on_stage("forecast graph")
            export_forecast_graph(model, staging / FORECAST_GRAPH)
        for graph in (STEP_GRAPH, TEXT_GRAPH, FORECAST_GRAPH):
            if int8 and graph == STEP_GRAPH:   # text + forecast stay fp32: int8 forecasts equal fp32 ones
                on_stage(f"int8 {graph}")
                quantize_int8(staging / graph, out_dir / graph)
            else:
                shutil.move(staging / graph, out_dir / graph)
    on_stage("bundle")
    shutil.copy2(model_dir / TOKENIZER_SUBDIR / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)   # flat: plain names only
    for file_name in (CONFIG_FILE, "model_card.json", CARD_MD):
        if (model_dir / file_name).exists():
            shutil.copy2(model_dir / file_name, out_dir / file_name)
    vectors_file = add_catalogue_vectors(out_dir, catalogue, on_stage)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    fields = {
        "name": out_dir.name,
        "model": {"name": name, "version": card.get("version", ""), "sha256": card["weights"]["model.safetensors"][
            "sha256"], "base": config.get("base"), "source_dir": str(model_dir)},
        "precision": "int8-dynamic" if int8 else "fp32",
        "graph": {**cache_geometry(model), "opset": OPSET, "step": STEP_GRAPH, "text": TEXT_GRAPH,
                  "forecast": FORECAST_GRAPH, "tokenizer": TOKENIZER_FILE, "inputs": step_input_names(model),
                  "outputs": ["logits"],
                  "d_model": model.lm.config.hidden_size, "n_item_features": model.config.n_item_features,
                  **({"text_vectors": vectors_file} if vectors_file else {})},
        "trail_config": {k: v for k, v in config.items() if k != "llama"},
        "export_s": round(time.perf_counter() - started, 1),
    }
    return write_manifest(out_dir, fields)


def add_catalogue_vectors(out_dir: Path, catalogue: list[str] | None, on_stage) -> str | None:
    """Write the catalogue's text vectors into the bundle folder (its file name), or remove a stale file
    (a folder exported again without --catalogue must not list another export's vectors)."""
    from export.catalogue_vectors import CATALOGUE_VECTORS, write_catalogue_vectors

    if not catalogue:
        (out_dir / CATALOGUE_VECTORS).unlink(missing_ok=True)
        return None
    on_stage(f"text vectors of {len(catalogue)} catalogue texts")
    return write_catalogue_vectors(out_dir, catalogue).name
