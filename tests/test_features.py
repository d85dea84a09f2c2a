"""Offline features equal the stream's, and read nothing at or after the boundary (models.backtest_data)."""

from __future__ import annotations

import numpy as np
import pytest

from models.backtest_data import backtest_origins, feature_batch_at, targets_at
from models.datasets import EventLog, load_dataset, sorted_log
from models.features import SIGNAL_NAMES, FeatureBatch, feature_matrix, feature_names
from models.windows import (
    WindowSpec,
    bucket_counts,
    decode_ring,
    encode_ring,
    last_event_slot_matrix,
    merge_ring,
)

DAY_MS = 86_400_000
SPEC = WindowSpec(slot_s=86_400, bucket_s=7 * 86_400, n_buckets=3, allowed_lateness_s=86_400)


def tiny_log(events: list[tuple[str, float, str]], items: dict[str, str] | None = None) -> EventLog:
    """A log from (item, day, user) triples; day may be fractional."""
    item, day, user = zip(*events, strict=True)
    return sorted_log("tiny", np.array(item, dtype=object), np.array(user, dtype=object),
                      (np.array(day) * DAY_MS).astype(np.int64), None, None, items or {}, SPEC)


@pytest.fixture(scope="module")
def ml100k() -> EventLog:
    return load_dataset("ml-100k")


def stream_rings(log: EventLog, spec: WindowSpec, oldest_kept_slot: int, seed: int) -> dict[str, bytes]:
    """Feed the log's events through the stream's ring functions in random-sized, shuffled batches."""
    rng = np.random.default_rng(seed)
    store: dict[str, bytes] = {}
    cuts = np.sort(rng.choice(np.arange(1, len(log)), size=25, replace=False))
    for rows in np.split(np.arange(len(log)), cuts):
        rows = rng.permutation(rows)  # order inside a batch must not matter
        items = log.item_id[rows].astype(str)
        slots = spec.slots_of(log.ts_ms[rows])
        for item in np.unique(items):
            mine = items == item
            # a batch arrives as per-(item, slot) deltas, as the stream pre-aggregates them
            uniq, counts = np.unique(slots[mine], return_counts=True)
            ring = merge_ring(decode_ring(store.get(item)), uniq, counts, oldest_kept_slot)
            store[item] = encode_ring(ring)
    return store


def stream_feature_batch(store: dict[str, bytes], spec: WindowSpec, boundary: int, texts: dict) -> FeatureBatch:
    """What the stream computes at a boundary from its rings: active items, ordered by id."""
    rows = []
    for item in sorted(store):
        ring = decode_ring(store[item])
        counts = bucket_counts(ring["slot"], ring["count"], boundary, spec)
        if counts.sum() > 0:
            last = last_event_slot_matrix(np.zeros(len(ring), np.int64), ring["slot"], boundary, 1)[0]
            rows.append((item, counts, last))
    return FeatureBatch([r[0] for r in rows], np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                        boundary, spec, texts=[texts.get(r[0], "") for r in rows])


def assert_same_features(a: FeatureBatch, b: FeatureBatch) -> None:
    assert a.item_ids == b.item_ids
    np.testing.assert_array_equal(a.bucket_counts, b.bucket_counts)
    np.testing.assert_array_equal(a.last_event_slot, b.last_event_slot)
    assert a.texts == b.texts
    for name in SIGNAL_NAMES:
        np.testing.assert_array_equal(a.signals[name], b.signals[name])


def test_stream_rings_give_the_backtest_features_on_ml100k(ml100k):
    spec = ml100k.default_spec()
    boundary = backtest_origins(ml100k, spec, 8)[3]
    # the stream keeps what a boundary still to be scored can read; events after the boundary arrive too
    store = stream_rings(ml100k, spec, oldest_kept_slot=boundary - spec.window_slots, seed=1)
    assert_same_features(stream_feature_batch(store, spec, boundary, ml100k.items),
                         feature_batch_at(ml100k, spec, boundary))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_rings_give_the_backtest_features_at_every_boundary(seed):
    rng = np.random.default_rng(seed)
    events = [(f"i{rng.integers(0, 12)}", float(rng.uniform(0, 60)), f"u{rng.integers(0, 9)}") for _ in range(400)]
    log = tiny_log(events, {"i1": "one"})
    for boundary in range(5, 61, 4):
        store = stream_rings(log, SPEC, oldest_kept_slot=boundary - SPEC.window_slots, seed=seed)
        assert_same_features(stream_feature_batch(store, SPEC, boundary, log.items),
                             feature_batch_at(log, SPEC, boundary))


def test_features_ignore_every_event_at_or_after_the_boundary(ml100k):
    spec = ml100k.default_spec()
    for boundary in backtest_origins(ml100k, spec, 8):
        history = ml100k.before(spec.boundary_ms(boundary))
        assert len(history) < len(ml100k)
        assert_same_features(feature_batch_at(history, spec, boundary), feature_batch_at(ml100k, spec, boundary))


def test_feature_batch_holds_only_items_active_in_the_window_with_their_texts():
    log = tiny_log([("a", 0.5, "u"), ("a", 15.2, "u"), ("b", 20.1, "u"), ("c", 21.0, "u"), ("a", 20.9, "v")],
                   {"a": "Alpha | Drama"})
    batch = feature_batch_at(log, SPEC, 21)      # window: days 0..20
    assert batch.item_ids == ["a", "b"]          # c's event is at the boundary: not in the window
    assert batch.texts == ["Alpha | Drama", ""]
    np.testing.assert_array_equal(batch.bucket_counts, [[1, 0, 2], [0, 0, 1]])
    np.testing.assert_array_equal(batch.last_event_slot, [20, 20])
    assert batch.signals_of(0)["recency_slots"] == 0.0


def test_targets_count_the_bucket_starting_at_the_boundary():
    log = tiny_log([("a", 20.9, "u"), ("a", 21.0, "u"), ("a", 27.99, "u"), ("a", 28.0, "u"), ("b", 22.0, "u")])
    np.testing.assert_array_equal(targets_at(log, SPEC, 21, ["a", "b", "never-seen"]), [2, 1, 0])


def test_feature_matrix_has_one_named_column_per_bucket_and_signal():
    log = tiny_log([("a", 1.0, "u"), ("b", 9.0, "u"), ("b", 19.0, "u")])
    batch = feature_batch_at(log, SPEC, 21)
    matrix = feature_matrix(batch)
    assert matrix.shape == (2, len(feature_names(SPEC)))
    np.testing.assert_allclose(matrix[:, :3], np.log1p(batch.bucket_counts))
    np.testing.assert_array_equal(matrix[:, 3 + SIGNAL_NAMES.index("velocity")], batch.signals["velocity"])
