"""TRAIL's inputs and its greedy decoder in numpy, shared by the PyTorch model and the ONNX bundle.

One prompt builder and one decoding loop serve both paths (`models.trail_scorer.TrailScorer` and
`export.runtime.TrailRuntime`), so a bundle explains exactly as the model it was exported from:
- `PromptTokens`: token ids of the prompt (<|im_start|> item text \\n next <period>:), of evidence lines
  (`models.rationales.evidence_text`) and of explanation rows (prompt + evidence), and decoding of generated
  ids, over a `tokenizers.Tokenizer` (a transformers fast tokenizer passes its `backend_tokenizer`);
- `prompt_inputs`: the numeric prefix, left-padded token ids, attention mask and RoPE positions of a prompt
  pass; `context_ids` for a model with a copy path (`models.trail`);
- `greedy_decode`: the loop over a model's step (prompt pass, then one token at a time with its key/value
  cache), at most `max_new_tokens` tokens, stopping when every row has written <|im_end|>.
No torch, no onnxruntime and no file I/O here (the stream imports this through `export`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.rationales import period_word

PAD_ID = 0   # <|endoftext|>
BOS_ID = 1   # <|im_start|>
EOS_ID = 2   # <|im_end|>

# step(feeds, keep) -> next-token logits [B, V] at the last position. `feeds`: input_ids, attention_mask,
# position_ids, numeric_prefix (and context_ids with a copy path); the step keeps its own key/value cache and,
# when `keep` (bool [B] of the previous batch) is given, first drops the cache rows of finished rows.
DecodeStep = Callable[[dict[str, np.ndarray], np.ndarray | None], np.ndarray]


def numeric_prefix_inputs(features: np.ndarray, n_prefix: int) -> np.ndarray:
    """[n, F0] item features -> float32 [n, n_prefix, F0 + n_prefix]: each prefix slot gets the features and its
    one-hot."""
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
    (what a model with a copy path points at; the step graph's `context_ids` input)."""
    return np.concatenate([np.zeros((input_ids.shape[0], n_prefix), dtype=np.int64), input_ids], axis=1)


TEXT_ROW_CACHE = 50_000   # item texts whose token rows are kept (~32 ids each): tens of MB at most


class PromptTokens:
    """Token ids of the prompt (<|im_start|> text \\n next <period>:) and of evidence lines, cached per text.

    `tokenizer` is a `tokenizers.Tokenizer` (a transformers fast tokenizer's `backend_tokenizer`, or one read
    from a bundle's tokenizer.json).
    """

    def __init__(self, tokenizer, bucket_s: int, max_text_tokens: int, cache_size: int = TEXT_ROW_CACHE) -> None:
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens
        self.marker = self.encode(f"\nnext {period_word(bucket_s)}:")
        self.cache_size = max(1, cache_size)
        self._cache: dict[str, list[int]] = {}   # insertion order: the oldest text is dropped first when full

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def text_row(self, text: str) -> list[int]:
        """<|im_start|> + the item text's first max_text_tokens tokens: what the text vector is read from."""
        row = self._cache.get(text)
        if row is None:
            if len(self._cache) >= self.cache_size:
                del self._cache[next(iter(self._cache))]   # a worker's catalogue grows without end; this may not
            row = self._cache[text] = [BOS_ID, *self.encode(text)[: self.max_text_tokens]]
        return row

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

    def explanation_rows(self, texts: list[str], lines: list[str]) -> list[list[int]]:
        """Prompt + evidence line per item: what greedy decoding starts from."""
        return [p + e for p, e in zip(self.prompts(texts), self.evidence(lines), strict=True)]

    def decode(self, ids: list[int]) -> str:
        """Generated ids up to (not including) <|im_end|> as text, special tokens dropped, stripped."""
        ids = ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def greedy_decode(step: DecodeStep, rows: list[list[int]], features: np.ndarray, n_prefix: int,
                  max_new_tokens: int, copy_path: bool, drop_finished: bool = True) -> list[list[int]]:
    """Greedy token ids per row (ending with <|im_end|> when written), at most max_new_tokens each.

    A prompt pass over the numeric prefix and the left-padded `rows`, then one token per step. With
    `drop_finished`, a row that has written <|im_end|> leaves the batch (its later tokens would be cut off
    anyway) and `step` is told which rows stay; without it, every row runs until all are done, and a row's
    ids after its <|im_end|> are dropped here too.
    """
    feeds = prompt_inputs(rows, features, n_prefix)
    n_features = feeds["numeric_prefix"].shape[2]
    if copy_path:
        feeds["context_ids"] = context_ids(feeds["input_ids"], n_prefix)
    next_ids = step(feeds, None).argmax(axis=-1).astype(np.int64)
    mask, pos, context = feeds["attention_mask"], feeds["position_ids"][:, -1:], feeds.get("context_ids")
    active = np.arange(len(rows))                      # original row of each batch row
    done = np.zeros(len(rows), dtype=bool)
    out: list[list[int]] = [[] for _ in rows]
    for _ in range(max_new_tokens):
        for row, token in zip(active, next_ids.tolist(), strict=True):
            out[row].append(token)
        done |= next_ids == EOS_ID
        if done.all() or len(out[active[0]]) == max_new_tokens:
            break
        keep = None
        if drop_finished and done.any():
            keep = ~done
            active, next_ids, mask, pos, done = active[keep], next_ids[keep], mask[keep], pos[keep], done[keep]
            context = None if context is None else context[keep]
        mask = np.concatenate([mask, np.ones((len(active), 1), dtype=np.int64)], axis=1)
        pos = pos + 1
        feeds = {"input_ids": next_ids[:, None], "attention_mask": mask, "position_ids": pos,
                 "numeric_prefix": np.zeros((len(active), 0, n_features), dtype=np.float32)}
        if context is not None:
            context = np.concatenate([context, next_ids[:, None]], axis=1)
            feeds["context_ids"] = context
        next_ids = step(feeds, keep).argmax(axis=-1).astype(np.int64)
    return [ids[: ids.index(EOS_ID) + 1] if EOS_ID in ids else ids for ids in out]
