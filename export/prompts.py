"""TRAIL model inputs in numpy, for serving without torch: prompt tokens, numeric prefix, padding, positions.

The item's numeric features come from `models.features.numeric_features` (torch-free, shared). The rest
are numpy twins of torch helpers in `models.trail` (`numeric_prefix_inputs`, `left_pad`,
`positions_from_mask`, `prompt_inputs`) and of `models.trail_scorer.PromptTokens`, which import torch at
the top; tests/test_export.py checks that both give identical arrays and token ids. The tokenizer is the
`tokenizers` library reading the bundle's tokenizer.json from verified bytes (byte-level BPE: transformers'
decode does no extra clean-up for it, so decoding matches).
No torch, no onnxruntime, no file I/O here.
"""

from __future__ import annotations

import numpy as np

from models.rationales import period_word

PAD_ID = 0   # <|endoftext|>
BOS_ID = 1   # <|im_start|>
EOS_ID = 2   # <|im_end|>


def numeric_prefix_inputs(features: np.ndarray, n_prefix: int) -> np.ndarray:
    """[n, F0] item features -> float32 [n, n_prefix, F0 + n_prefix]: features plus the slot's one-hot."""
    features = np.asarray(features, dtype=np.float32)
    n = features.shape[0]
    slots = np.broadcast_to(np.eye(n_prefix, dtype=np.float32), (n, n_prefix, n_prefix))
    repeated = np.broadcast_to(features[:, None, :], (n, n_prefix, features.shape[1]))
    return np.concatenate([repeated, slots], axis=-1)


def left_pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token rows -> (ids int64 [B, T], mask int64 [B, T]), padded on the left (every row ends at the last column)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = r
            mask[i, width - len(r):] = 1
    return ids, mask


def positions_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    """Contiguous RoPE positions over the non-padding entries (padding gets 0)."""
    return np.maximum(np.cumsum(attention_mask.astype(np.int64), axis=1) - 1, 0)


def prompt_inputs(token_rows: list[list[int]], features: np.ndarray, n_prefix: int) -> dict[str, np.ndarray]:
    """Inputs of a prompt pass: numeric prefix, then left-padded tokens (the forecast marker last in each row)."""
    ids, token_mask = left_pad(token_rows)
    mask = np.concatenate([np.ones((len(token_rows), n_prefix), dtype=np.int64), token_mask], axis=1)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions_from_mask(mask),
        "numeric_prefix": numeric_prefix_inputs(features, n_prefix),
    }


def context_ids(input_ids: np.ndarray, n_prefix: int) -> np.ndarray:
    """The token id of every position of a prompt pass [B, K + T]: a placeholder (0) under the numeric prefix
    (the step graph's `context_ids` input, for a model with a copy path; `models.trail.context_ids`)."""
    return np.concatenate([np.zeros((input_ids.shape[0], n_prefix), dtype=np.int64), input_ids], axis=1)


def tokenizer_from_bytes(data: bytes):
    """A `tokenizers.Tokenizer` from the verified bytes of a tokenizer.json; no transformers, no torch."""
    from tokenizers import Tokenizer

    return Tokenizer.from_buffer(data)


class PromptTokens:
    """Token ids of the prompt (<|im_start|> text \\n next <period>:) and of evidence lines, cached per text.

    Same ids as `models.trail_scorer.PromptTokens` (tests check it), with a `tokenizers.Tokenizer`.
    """

    def __init__(self, tokenizer, bucket_s: int, max_text_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens
        self.marker = self.encode(f"\nnext {period_word(bucket_s)}:")
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def text_row(self, text: str) -> list[int]:
        """<|im_start|> + the item text's first max_text_tokens tokens: what the text vector is read from."""
        if text not in self._cache:
            self._cache[text] = [BOS_ID, *self.encode(text)[: self.max_text_tokens]]
        return self._cache[text]

    def text_rows(self, texts: list[str]) -> list[list[int]]:
        return [self.text_row(t) for t in texts]

    def prompt(self, text: str) -> list[int]:
        return self.text_row(text) + self.marker

    def prompts(self, texts: list[str]) -> list[list[int]]:
        return [self.prompt(t) for t in texts]

    def evidence(self, lines: list[str]) -> list[list[int]]:
        """' <evidence>\\n' per line: what the generator reads before writing the explanation."""
        encodings = self.tokenizer.encode_batch([f" {line}\n" for line in lines], add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode(self, ids: list[int]) -> str:
        """Generated ids up to (not including) <|im_end|> as text, special tokens dropped, stripped."""
        ids = ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
