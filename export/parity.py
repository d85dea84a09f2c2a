"""Parity of a bundle with the PyTorch model it was exported from: forecasts, text vectors, logits, greedy text.

Used by `trail bench score` and tests/test_export.py. It runs both `models.trail_scorer.TrailScorer`
(torch) and `export.onnx_scorer.BundleScorer` (ONNX Runtime) on the same `FeatureBatch`. torch is imported
here, inside the functions: never import this module from the serving path.
"""

from __future__ import annotations

import numpy as np

from models.features import FeatureBatch


def prompt_logits_torch(torch_scorer, batch: FeatureBatch) -> np.ndarray:
    """Logits [n, V] at the forecast marker of every row, from the torch model."""
    import torch
    from transformers import DynamicCache

    from models.trail import context_ids, prompt_inputs

    rows = torch_scorer.tokens.prompts(batch.texts)
    model = torch_scorer.model
    with torch.inference_mode():
        ids, mask, pos, numeric = prompt_inputs(rows, torch_scorer.features(batch), torch_scorer.config.n_prefix)
        logits, _ = model.next_token_logits(ids, mask, pos, numeric, DynamicCache(config=model.lm.config),
                                            context_ids(ids, model.config.n_prefix))
        return logits.numpy()


def prompt_logits_onnx(bundle_scorer, batch: FeatureBatch) -> np.ndarray:
    """Logits [n, V] of the step graph's prompt pass (empty cache)."""
    from models.prompts import context_ids, prompt_inputs

    rows = bundle_scorer.tokens.prompts(batch.texts)
    feeds = prompt_inputs(rows, bundle_scorer.features(batch), bundle_scorer.runtime.geometry.n_prefix)
    if bundle_scorer.runtime.copy_path:
        feeds["context_ids"] = context_ids(feeds["input_ids"], bundle_scorer.runtime.geometry.n_prefix)
    logits, _ = bundle_scorer.runtime.step(feeds, bundle_scorer.runtime.empty_cache(len(rows)))
    return logits


def parity_report(torch_scorer, bundle_scorer, batch: FeatureBatch, n_explain: int = 8,
                  max_new_tokens: int = 48) -> dict:
    """Max |difference| of forecast_log1p, item text vectors and prompt logits; greedy text match."""
    torch_log1p = torch_scorer.forecast_log1p(torch_scorer.features(batch), batch.texts)
    onnx_log1p = bundle_scorer.forecast_log1p(bundle_scorer.features(batch), batch.texts)
    torch_vecs = torch_scorer.text_vectors(batch.texts)
    onnx_vecs = bundle_scorer.text_vectors(batch.texts)
    step_logits = prompt_logits_onnx(bundle_scorer, batch)
    torch_logits = prompt_logits_torch(torch_scorer, batch)
    forecast = np.maximum(0.0, np.expm1(torch_log1p))
    index = np.arange(min(n_explain, len(batch)))
    saved_cap = torch_scorer.config.max_new_tokens
    torch_scorer.config.max_new_tokens = max_new_tokens
    try:
        torch_texts = torch_scorer.explain(batch, forecast, index)
    finally:
        torch_scorer.config.max_new_tokens = saved_cap
    onnx_texts = bundle_scorer.explain(batch, forecast, index, max_new_tokens=max_new_tokens)
    diffs = {
        "forecast_log1p": float(np.abs(onnx_log1p - torch_log1p).max()),
        "text_vec": float(np.abs(onnx_vecs - torch_vecs).max()),
        "logits": float(np.abs(step_logits - torch_logits).max()),
    }
    matches = [a == b for a, b in zip(torch_texts, onnx_texts, strict=True)]
    return {
        "max_abs_diff_vs_torch": max(diffs.values()),
        "max_abs_diff": diffs,
        "greedy_text_match": bool(all(matches)),
        "greedy_rows_matching": f"{sum(matches)}/{len(matches)}",
        "examples": [{"torch": a, "onnx": b} for a, b in zip(torch_texts[:2], onnx_texts[:2], strict=True)],
    }
