"""One TRAIL training step (arXiv 2602.04225): the three passes' tensors and their joint loss, and LoRA.

- forecast pass over `batch_size` rows: the LM reads each item text on its own (text vector), the forecast
  head maps [numeric features, text vector] -> log1p forecast, L1 loss;
- explanation pass over the first `explain_rows` rows: prompt + evidence line (signals and the forecast)
  + a grounded rationale (`models.rationales`), cross-entropy on the rationale tokens;
- contrastive pass over the first `contrastive_rows` rows (off with contrastive=False): InfoNCE between
  the forecast representation (the head's hidden layer) and the rationale's representation, against the
  batch's other rationales and two hard negatives per row (flipped direction, wrong magnitude).
In training the evidence line carries the true next count, jittered (log-normal noise), as the forecast;
at inference it carries the model's own forecast. No loop, no data loading and no saving here (`models.train`).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from models.prompts import EOS_ID, PromptTokens, numeric_prefix_inputs
from models.rationales import N_TEMPLATES, evidence_text, rationale, vocabulary_texts, wrong_forecasts
from models.trail import TrailConfig, TrailModel, left_pad, positions_from_mask
from models.trail_losses import explanation_loss, forecast_loss, info_nce, share_loss
from models.train_config import TrainConfig
from models.train_examples import Examples
from models.wording import TREND_PHRASES

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class StepBuilder:
    """Turns sampled rows into the three passes' tensors (tokens, labels, rationales, hard negatives)."""

    def __init__(self, tokenizer, config: TrailConfig, window_slots: int) -> None:
        """`tokenizer`: the transformers (fast) tokenizer of the model."""
        self.tokens = PromptTokens(tokenizer.backend_tokenizer, config.bucket_s, config.max_text_tokens)
        self.tokenizer = tokenizer
        self.config = config
        self.window_slots = window_slots
        self.grounding_ids = grounding_token_ids(tokenizer)

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


def explanation_rows(rows: np.ndarray, cfg: TrainConfig, rng: np.random.Generator,
                     top_pool: np.ndarray | None) -> np.ndarray:
    """The rows of the explanation (and contrastive) passes: the batch's first rows, with the last
    `explain_top_share` of the explanation rows drawn from `top_pool` instead (the counts a stream's top-K sees).
    The contrastive rows stay the batch's own (their forecast representation comes from the forecast pass)."""
    n_text = max(cfg.explain_rows, cfg.contrastive_rows if cfg.contrastive else 0)
    text_rows = rows[:n_text].copy()
    if cfg.explain_top_share <= 0 or top_pool is None or not len(top_pool):
        return text_rows
    keep = cfg.contrastive_rows if cfg.contrastive else 0
    n_top = min(round(cfg.explain_top_share * cfg.explain_rows), max(cfg.explain_rows - keep, 0), len(top_pool))
    if n_top:
        text_rows[cfg.explain_rows - n_top: cfg.explain_rows] = rng.choice(top_pool, size=n_top, replace=False)
    return text_rows


def train_step(model: TrailModel, builder: StepBuilder, data: Examples, rows: np.ndarray, cfg: TrainConfig,
               rng: np.random.Generator, top_pool: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """The joint loss of one batch: forecast L1 + lm_weight * explanation CE + contrastive_weight * InfoNCE.
    `top_pool`: rows some explanation rows are drawn from (`cfg.explain_top_share`, `explanation_rows`)."""
    n_prefix = model.config.n_prefix
    dev = model.lm.lm_head.weight.device
    texts = data.texts_of(rows)
    unique_texts, text_of_row = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    tx_ids, tx_mask = left_pad(builder.tokens.text_rows(list(unique_texts)))
    text_vec = model.read_text(tx_ids.to(dev), tx_mask.to(dev))[torch.from_numpy(text_of_row.reshape(-1)).to(dev)]
    forecast_log1p, h_forecast = model.forecast(torch.from_numpy(data.features[rows]).to(dev), text_vec)
    targets = torch.from_numpy(data.targets[rows]).to(dev)
    losses = {"forecast": forecast_loss(forecast_log1p, targets)}
    if cfg.share_weight > 0:   # the rows come from one boundary (models.train.batch_rows)
        losses["share"] = share_loss(forecast_log1p, targets)

    text_rows = explanation_rows(rows, cfg, rng, top_pool)
    n_text = len(text_rows)
    forecasts = jittered(data.targets[text_rows], cfg.forecast_jitter, rng)
    templates = rng.integers(0, N_TEMPLATES, size=n_text)
    lines, positives, hard = builder.rationales(data, text_rows, forecasts, templates, cfg.descriptor)

    if cfg.explain_rows > 0 and cfg.lm_weight > 0:
        k = cfg.explain_rows
        prompts = builder.tokens.prompts(data.texts_of(text_rows[:k]))
        ex_ids, ex_mask, labels = builder.explanation_batch(prompts, lines[:k], positives[:k],
                                                            cfg.explain_token_share, rng)
        ex_mask = torch.cat([torch.ones(k, n_prefix, dtype=torch.long), ex_mask], dim=1)
        numeric = torch.from_numpy(numeric_prefix_inputs(data.features[text_rows[:k]], n_prefix))
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

    losses["total"] = (losses["forecast"] + cfg.share_weight * losses.get("share", 0.0)
                       + cfg.lm_weight * losses.get("explanation", 0.0)
                       + cfg.contrastive_weight * losses.get("contrastive", 0.0))
    return losses



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

