"""`models.prompts.PromptTokens`: token rows cached per item text, within a bound (a worker's catalogue grows)."""

from __future__ import annotations

from types import SimpleNamespace

from models.prompts import BOS_ID, PromptTokens


class CountingTokenizer:
    """One id per character (ord), and a count of encode calls."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str, add_special_tokens: bool = False):
        self.calls += 1
        return SimpleNamespace(ids=[ord(c) for c in text])


def test_text_rows_are_cached_and_cut_to_max_text_tokens():
    tokenizer = CountingTokenizer()
    tokens = PromptTokens(tokenizer, bucket_s=86_400, max_text_tokens=3)
    calls = tokenizer.calls
    assert tokens.text_row("abcdef") == [BOS_ID, ord("a"), ord("b"), ord("c")]
    assert tokens.text_row("abcdef") == [BOS_ID, ord("a"), ord("b"), ord("c")]
    assert tokenizer.calls == calls + 1


def test_the_cache_keeps_at_most_cache_size_texts_dropping_the_oldest():
    tokenizer = CountingTokenizer()
    tokens = PromptTokens(tokenizer, bucket_s=86_400, max_text_tokens=8, cache_size=3)
    for text in ["a", "b", "c", "d"]:
        tokens.text_row(text)
    assert len(tokens._cache) == 3 and "a" not in tokens._cache
    calls = tokenizer.calls
    assert tokens.text_row("d") == [BOS_ID, ord("d")] and tokenizer.calls == calls       # kept
    assert tokens.text_row("a") == [BOS_ID, ord("a")] and tokenizer.calls == calls + 1   # read again, same row
    assert len(tokens._cache) == 3
