"""The scoring step: the publishing guard (generated explanations are checked before they go out) and the
candidates a partition sends, with their catalogue texts."""

from __future__ import annotations

import numpy as np

from models.faithfulness import check_explanation
from models.features import FeatureBatch
from models.rationales import rationale
from models.scoring import VelocityScorer
from models.windows import WindowSpec
from streams.scoring_loop import grounded_explanations, partition_candidates, trend_records

SPEC = WindowSpec(slot_s=86_400, bucket_s=7 * 86_400, n_buckets=4)


def batch() -> FeatureBatch:
    counts = np.array([[1, 2, 4, 8], [9, 7, 5, 3]])
    return FeatureBatch(["up", "down"], counts, np.array([99, 99]), 100, SPEC, texts=["Up (1995)", "Down (1996)"])


def test_a_faithful_generated_explanation_is_kept_and_a_wrong_number_is_replaced_by_the_template() -> None:
    b = batch()
    forecast = np.array([12.0, 2.0])
    good = rationale(b.signals_of(0), 12.0, SPEC.bucket_s, 0)
    wrong = rationale(b.signals_of(1), 2.0, SPEC.bucket_s, 0).replace("3", "37", 1)
    assert not check_explanation(wrong, b.signals_of(1), 2.0, 3.0)[0]
    texts, sources = grounded_explanations(b, forecast, np.array([0, 1]), [good, wrong], True, VelocityScorer())
    assert texts[0] == good and sources == ["model", "template"]
    assert texts[1] == VelocityScorer().explain(b, forecast, np.array([1]))[0]
    assert check_explanation(texts[1], b.signals_of(1), 2.0, 3.0) == (True, True)
    records = trend_records(b, forecast, np.array([0, 1]), texts, {"name": "m", "version": "v", "sha256": "s"},
                            sources)
    assert [r["explanation_source"] for r in records] == ["model", "template"]


def test_baseline_explanations_are_labelled_templates_and_left_alone() -> None:
    b = batch()
    texts, sources = grounded_explanations(b, np.array([12.0, 2.0]), np.array([1]), ["anything"], False,
                                           VelocityScorer())
    assert texts == ["anything"] and sources == ["template"]


def test_a_batch_made_without_texts_reads_the_texts_of_its_top_k_only() -> None:
    """A velocity worker's snapshot reads no catalogue texts; its top-K candidates still carry theirs."""
    counts = np.array([[0, 0, 0, k] for k in range(1, 11)])
    no_texts = FeatureBatch([f"i{k}" for k in range(1, 11)], counts, np.full(10, 99), 100, SPEC)
    forecast = VelocityScorer().forecast(no_texts)
    asked: list[list[str]] = []

    def texts_of(item_ids: list[str]) -> list[str]:
        asked.append(item_ids)
        return [f"Title of {item}" for item in item_ids]

    candidates = partition_candidates(no_texts, forecast, 3, "velocity-baseline", texts_of)
    assert [c["item_id"] for c in candidates] == ["i10", "i9", "i8"]
    assert asked == [["i10", "i9", "i8"]]
    assert [c["text"] for c in candidates] == ["Title of i10", "Title of i9", "Title of i8"]
    with_texts = FeatureBatch(no_texts.item_ids, counts, np.full(10, 99), 100, SPEC,
                              texts=texts_of(no_texts.item_ids))
    assert partition_candidates(with_texts, forecast, 3, "velocity-baseline") == candidates
