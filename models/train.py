"""Training TRAIL (arXiv 2602.04225): the loop, its schedule and time cap, validation, and the saved model card.

The rows come from `models.train_examples`, each step's joint loss from `models.train_step`, the
hyper-parameters from `models.train_config`, the card's text from `models.model_card`. No CLI here
(see `streams.cli.train`).
"""

from __future__ import annotations

import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from models.faithfulness import check_explanation
from models.features import SIGNAL_NAMES
from models.metrics import item_ndcg_at_k
from models.model_card import base_description, first_last_losses, render_model_card
from models.rationales import evidence_text
from models.trail import TrailConfig, base_forecast_log1p, build_model, load_tokenizer
from models.trail_scorer import MODELS_DIR, TrailScorer, save_trail_model
from models.train_config import TrainConfig
from models.train_examples import Examples, build_examples, top_rows, training_boundaries
from models.train_step import StepBuilder, add_lora, merge_lora, rationale_output_ids, train_step


def lr_factor(progress: float, warmup_frac: float) -> float:
    """Linear warm-up over the first `warmup_frac` of training, then cosine decay to 10 % (progress in [0, 1])."""
    if progress < warmup_frac:
        return max(progress / warmup_frac, 0.01)
    rest = (progress - warmup_frac) / max(1e-9, 1.0 - warmup_frac)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(rest, 1.0)))


def training_progress(step: int, steps: int) -> float:
    """Share of the run done, by steps only: the LR schedule must not depend on the clock (reproducibility)."""
    return step / max(steps, 1)


def over_time_cap(elapsed_s: float, max_minutes: float) -> bool:
    """Whether a run has used up its time cap (0: no cap)."""
    return bool(max_minutes) and elapsed_s >= max_minutes * 60


def cut_short_warning(steps_done: int, steps: int, max_minutes: float) -> str:
    """The loud message of a run the time cap stopped before its planned steps."""
    return (f"trail train: the --max-minutes cap of {max_minutes:g} minutes stopped training after {steps_done} of "
            f"{steps} planned steps. This model is NOT the reproducible {steps}-step model (same seed, same steps: "
            "same weights), and its learning rate never decayed fully. Re-run with a larger --max-minutes (0: no cap) "
            "or fewer --steps.")


def batch_rows(data: Examples, cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """The rows of one step: a random sample of all rows, or (with the listwise share loss, share_weight > 0)
    of one random boundary's rows, so that the loss compares items competing for the same next bucket."""
    if cfg.share_weight <= 0:
        return rng.choice(len(data), size=cfg.batch_size, replace=False)
    boundaries = np.unique(data.boundary)
    at = np.flatnonzero(data.boundary == boundaries[rng.integers(len(boundaries))])
    return rng.choice(at, size=min(cfg.batch_size, len(at)), replace=False)


# --- validation ------------------------------------------------------------------------------------------------


def ranking_validation(forecast: np.ndarray, truth: np.ndarray, boundary: np.ndarray, k: int = 10) -> dict:
    """MAE over all rows and item NDCG@k averaged over boundaries (as the backtest averages it over origins)."""
    ndcg = [item_ndcg_at_k(forecast[boundary == b], truth[boundary == b], k) for b in np.unique(boundary)]
    ndcg = [v for v in ndcg if not math.isnan(v)]
    return {"mae": round(float(np.abs(forecast - truth).mean()), 4),
            f"item_ndcg@{k}": round(float(np.mean(ndcg)), 4) if ndcg else None}


def validation_baselines(val: Examples, n_buckets: int) -> dict[str, np.ndarray]:
    """Count forecasts of the counting baselines that need no fit, from the validation rows' own features."""
    features = torch.from_numpy(val.features)
    out = {"recent-pop": val.signals[:, SIGNAL_NAMES.index("last_count")].astype(np.float64)}
    for kind in ("ema", "reddit-decay"):
        out[kind] = np.expm1(base_forecast_log1p(features, kind, n_buckets).double().numpy())
    return out


@torch.no_grad()
def validate_ranking(scorer: TrailScorer, val: Examples, per_boundary: int = 0) -> dict:
    """Every validation row: the model's MAE and item NDCG@10 per boundary, beside the counting baselines'
    on the same rows (what a lever is chosen on; the sampled `val_mae` below is the older figure), and with
    `per_boundary`, the checker on the explanations of each boundary's top forecasts."""
    rows = np.arange(len(val))
    forecast = np.maximum(0.0, np.expm1(scorer.forecast_log1p(val.features, val.texts_of(rows))))
    out = {"val_all_rows": int(len(val)), **{f"val_all_{k}": v for k, v in
                                             ranking_validation(forecast, val.targets, val.boundary).items()}}
    out["val_all_baselines"] = {name: ranking_validation(f, val.targets, val.boundary)
                                for name, f in validation_baselines(val, scorer.config.n_buckets).items()}
    out.update(validate_top_explanations(scorer, val, forecast, per_boundary))
    return out


def explanation_checks(scorer: TrailScorer, data: Examples, rows: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """(faithful, direction consistent) of the model's explanations of `rows` (forecast: one per row), bool [n, 2]."""
    last = data.signals[:, SIGNAL_NAMES.index("last_count")]
    lines = [evidence_text(data.signals_of(int(i)), float(f), scorer.config.bucket_s)
             for i, f in zip(rows, forecast, strict=True)]
    texts = scorer.explain_rows(scorer.tokens.explanation_rows(data.texts_of(rows), lines), data.features[rows])
    checks = [check_explanation(text, data.signals_of(int(i)), float(f), float(last[i]), item_text)
              for i, f, item_text, text in zip(rows, forecast, data.texts_of(rows), texts, strict=True)]
    return np.array(checks, dtype=bool).reshape(-1, 2)


def validate_top_explanations(scorer: TrailScorer, val: Examples, forecast: np.ndarray, per_boundary: int) -> dict:
    """The checker on the explanations a stream publishes: each validation boundary's top `per_boundary` forecasts
    among *all* its rows (the sampled `val_faithfulness` explains the top of a 2,000-row sample: smaller counts)."""
    if per_boundary <= 0 or not len(val):
        return {}
    top = np.concatenate([at[np.argsort(-forecast[at], kind="stable")[:per_boundary]]
                          for at in (np.flatnonzero(val.boundary == b) for b in np.unique(val.boundary))])
    checks = explanation_checks(scorer, val, top, forecast[top])
    return {"val_top_explained": int(len(checks)), "val_top_faithfulness": round(float(checks[:, 0].mean()), 4),
            "val_top_direction_consistency": round(float(checks[:, 1].mean()), 4)}


@torch.no_grad()
def validate(scorer: TrailScorer, val: Examples, cfg: TrainConfig, bucket_s: int) -> dict:
    """Forecast MAE / L1-log on held-out rows, and the checker on explanations of each boundary's top rows."""
    if not len(val):
        return {}
    rng = np.random.default_rng(cfg.seed + 1)
    rows = np.sort(rng.choice(len(val), size=min(cfg.val_rows, len(val)), replace=False))
    sample = val.subset(rows)
    pred_log1p = scorer.forecast_log1p(sample.features, sample.texts_of(np.arange(len(sample))))
    forecast = np.maximum(0.0, np.expm1(pred_log1p))
    truth = sample.targets
    last = sample.signals[:, SIGNAL_NAMES.index("last_count")]
    out = {
        **validate_ranking(scorer, val, cfg.val_explained_per_boundary),
        "val_rows": int(len(sample)),
        "val_mae": float(np.abs(forecast - truth).mean()),
        "val_l1_log1p": float(np.abs(pred_log1p - np.log1p(truth)).mean()),
        "val_mae_recent_pop": float(np.abs(last - truth).mean()),
    }
    explained, checks, examples = [], [], []
    for b in np.unique(sample.boundary):
        at = np.flatnonzero(sample.boundary == b)
        explained += list(at[np.argsort(-forecast[at], kind="stable")[: cfg.val_explained_per_boundary]])
    explained = np.array(explained, dtype=np.int64)
    features = sample.features[explained]
    lines = [evidence_text(sample.signals_of(int(i)), float(forecast[i]), bucket_s) for i in explained]
    rows_tokens = scorer.tokens.explanation_rows(sample.texts_of(explained), lines)
    texts = scorer.explain_rows(rows_tokens, features)
    for i, item_text, text in zip(explained, sample.texts_of(explained), texts, strict=True):
        checks.append(check_explanation(text, sample.signals_of(int(i)), float(forecast[i]), float(last[i]),
                                        item_text))
        if len(examples) < 5:
            examples.append({"text": text, "forecast": round(float(forecast[i]), 2),
                             "last_count": float(last[i]), "truth": float(truth[i])})
    checks_arr = np.array(checks, dtype=bool).reshape(-1, 2)
    out.update({
        "val_explained": int(len(checks_arr)),
        "val_faithfulness": float(checks_arr[:, 0].mean()),
        "val_direction_consistency": float(checks_arr[:, 1].mean()),
        "val_examples": examples,
    })
    return out

# --- the run ----------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Callbacks the CLI turns into progress bars (all optional)."""

    on_phase: Callable[[str, int], None] = lambda name, total: None
    on_advance: Callable[[dict], None] = lambda info: None


def train(cfg: TrainConfig, out_dir: Path | None = None, progress: Progress | None = None) -> dict:
    """Train, validate and save one TRAIL model; returns its model card (dict)."""
    from models.datasets import load_dataset

    progress = progress or Progress()
    if cfg.device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device}: torch {torch.__version__} sees no CUDA device on this machine; "
                         "train with --device cpu (the default)")
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out_dir = out_dir or MODELS_DIR / (f"trail-{cfg.base}" if cfg.contrastive else f"trail-{cfg.base}-nocontrastive")
    name = out_dir.name   # the scorer's name: trail-tiny, trail-smollm2, or the folder --out names

    log = load_dataset(cfg.dataset)
    spec = log.default_spec()
    cutoff, train_range, val_range = training_boundaries(log, spec, cfg.n_origins, cfg.val_days)
    progress.on_phase("examples", len(train_range) + len(val_range))
    train_data = build_examples(log, spec, train_range, lambda: progress.on_advance({}))
    val_data = build_examples(log, spec, val_range, lambda: progress.on_advance({})) if len(val_range) else (
        train_data.subset(np.zeros(0, dtype=np.int64)))

    progress.on_phase("model", 1)
    tokenizer = load_tokenizer()
    config = TrailConfig(base=cfg.base, n_buckets=spec.n_buckets, bucket_s=spec.bucket_s, copy_path=cfg.copy_path,
                         forecast_base=cfg.forecast_base)
    if cfg.output_vocab == "rationales":
        config.output_ids = rationale_output_ids(tokenizer, spec.bucket_s)
    elif cfg.output_vocab != "all":
        raise ValueError(f"output_vocab must be 'all' or 'rationales', got {cfg.output_vocab!r}")
    model = build_model(config, cfg.seed)
    lora = add_lora(model, cfg) if cfg.base == "smollm2" else None
    model.to(cfg.device)
    progress.on_advance({})
    builder = StepBuilder(tokenizer, config, spec.window_slots)
    load_s = time.perf_counter() - started

    steps = cfg.steps or (math.ceil(cfg.epochs * len(train_data) / cfg.batch_size) if cfg.epochs
                          else cfg.default_steps())
    head_params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("lm.")]
    lm_params = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("lm.")]
    optimizer = torch.optim.AdamW([
        {"params": lm_params, "lr": cfg.lr, "base_lr": cfg.lr},
        {"params": head_params, "lr": cfg.head_lr, "base_lr": cfg.head_lr},
    ], weight_decay=cfg.weight_decay, fused=True)   # fused: the tiny step's update of the 49k x 128 embedding
    trainable = sum(p.numel() for p in lm_params + head_params)

    top_pool = top_rows(train_data, cfg.explain_top_n) if cfg.explain_top_share > 0 else None
    model.train()
    progress.on_phase("train", steps)
    history: list[dict] = []
    train_started = time.perf_counter()
    stopped_early = False
    step = 0
    for step in range(steps):
        if over_time_cap(time.perf_counter() - train_started, cfg.max_minutes):
            stopped_early = True
            step -= 1
            break
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(training_progress(step, steps), cfg.warmup_frac)
        rows = batch_rows(train_data, cfg, rng)
        losses = train_step(model, builder, train_data, rows, cfg, rng, top_pool)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(lm_params + head_params, 1.0)
        optimizer.step()
        record = {k: round(float(v.detach()), 4) for k, v in losses.items()}
        history.append(record)
        progress.on_advance(record)
    steps_done = step + 1
    train_s = time.perf_counter() - train_started
    if stopped_early:
        warnings.warn(cut_short_warning(steps_done, steps, cfg.max_minutes), RuntimeWarning, stacklevel=2)

    model.to("cpu")
    if lora is not None:
        merge_lora(model, lora)
    model.eval()
    progress.on_phase("validate", 1)
    scorer = TrailScorer(model, tokenizer, name=name, version="unsaved", sha256="")
    val_started = time.perf_counter()
    metrics = validate(scorer, val_data, cfg, spec.bucket_s)
    progress.on_advance({})
    metrics.update(first_last_losses(history))
    metrics["validate_s"] = round(time.perf_counter() - val_started, 1)

    card = {
        "name": name,
        "model": "TRAIL (arXiv 2602.04225): causal LM + numeric prefix + text-vector forecast head + "
                 "explanation generator",
        "base": base_description(cfg.base),
        "parameters": {"total": model.n_params(), "trained": trainable},
        "data": {
            "dataset": cfg.dataset, "slot_s": spec.slot_s, "bucket_s": spec.bucket_s, "n_buckets": spec.n_buckets,
            "cutoff_slot": cutoff,
            "cutoff_utc": datetime.fromtimestamp(spec.boundary_ms(cutoff) / 1000, UTC).isoformat(),
            "train_boundaries": [train_range.start, train_range.stop - 1], "train_rows": len(train_data),
            "val_boundaries": [val_range.start, val_range.stop - 1] if len(val_range) else [],
            "val_rows": len(val_data),
            "leakage_rule": "every training and validation target bucket ends at or before the first backtest "
                            f"origin (backtest_origins(n_origins={cfg.n_origins})[0])",
        },
        "hyperparameters": {**asdict(cfg), "steps_planned": steps, "steps_done": steps_done,
                            "stopped_early": stopped_early},
        "trail_config": {k: v for k, v in config.to_dict().items() if k != "llama"},
        "metrics": metrics,
        "timing": {"load_s": round(load_s, 1), "train_s": round(train_s, 1),
                   "s_per_step": round(train_s / max(steps_done, 1), 3),
                   "total_s": round(time.perf_counter() - started, 1),
                   "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                   "processor": platform.processor() or platform.machine()},
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "license_notes": "MovieLens-100K: GroupLens research-use terms; SmolLM2: Apache-2.0.",
    }
    progress.on_phase("save", 1)
    card = save_trail_model(model, tokenizer, out_dir, card, render_model_card)
    progress.on_advance({})
    card["out_dir"] = str(out_dir)
    return card

