"""Offline features equal the stream's, and read nothing at or after the boundary (models.backtest_data)."""

from __future__ import annotations

import numpy as np
import pytest
import rocksdict

from models.backtest_data import backtest_origins, feature_batch_at, targets_at
from models.datasets import EventLog, load_dataset, sorted_log
from models.features import SIGNAL_NAMES, FeatureBatch, feature_matrix, feature_names
from models.windows import WindowSpec
from streams.deltas import DeltaColumns
from streams.scoring_loop import features_at
from streams.state import PartitionState

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


def stream_state(log: EventLog, spec: WindowSpec, path, seed: int) -> PartitionState:
    """Feed the log through the stream's own state path (`PartitionState.apply_deltas`, the write, `accept`,
    as `streams.app` does) over real RocksDB, in random-sized batches of shuffled per-(item, slot) deltas."""
    rng = np.random.default_rng(seed)
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    state = PartitionState(0, db, spec, n_sources=1)
    cuts = np.sort(rng.choice(np.arange(1, len(log)), size=25, replace=False))
    offset = 0
    for rows in np.split(np.arange(len(log)), cuts):
        rows = rng.permutation(rows)  # order inside a batch must not matter
        items = log.item_id[rows].astype(str)
        slots = spec.slots_of(log.ts_ms[rows])
        columns = DeltaColumns()
        # a batch arrives as per-(item, slot) deltas, as the stream pre-aggregates them
        pairs, counts = np.unique(np.stack([items, slots.astype(str)]), axis=1, return_counts=True)
        for (item, slot), count in zip(pairs.T, counts, strict=True):
            columns.append(offset, str(item), int(slot), int(count), None)
            offset += 1
        update = state.apply_deltas(0, int(log.ts_ms[rows].max()), columns)
        for key, value in update.writes.items():
            db.put(key, value)
        state.accept(update)
    return state


def stream_feature_batch(state: PartitionState, spec: WindowSpec, boundary: int, texts: dict) -> FeatureBatch:
    """What the stream computes at a boundary: its snapshot of the rings, then `streams.scoring_loop.features_at`."""
    return features_at(state.snapshot(), boundary, spec, lambda ids: [texts.get(i, "") for i in ids])


def assert_same_features(a: FeatureBatch, b: FeatureBatch) -> None:
    assert a.item_ids == b.item_ids
    np.testing.assert_array_equal(a.bucket_counts, b.bucket_counts)
    np.testing.assert_array_equal(a.last_event_slot, b.last_event_slot)
    assert a.texts == b.texts
    for name in SIGNAL_NAMES:
        np.testing.assert_array_equal(a.signals[name], b.signals[name])


def test_stream_state_gives_the_backtest_features_on_ml100k(ml100k, tmp_path):
    spec = ml100k.default_spec()
    boundary = backtest_origins(ml100k, spec, 8)[3]
    # events after the boundary arrive too: the features read only the slots before it
    state = stream_state(ml100k.before(spec.boundary_ms(boundary + 3)), spec, tmp_path / "db", seed=1)
    assert_same_features(stream_feature_batch(state, spec, boundary, ml100k.items),
                         feature_batch_at(ml100k, spec, boundary))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_state_gives_the_backtest_features_at_every_boundary(seed, tmp_path):
    rng = np.random.default_rng(seed)
    events = [(f"i{rng.integers(0, 12)}", float(rng.uniform(0, 60)), f"u{rng.integers(0, 9)}") for _ in range(400)]
    log = tiny_log(events, {"i1": "one"})
    for boundary in range(5, 61, 4):
        # the log up to the boundary's slot: the state keeps every slot a boundary still to be scored can read
        state = stream_state(log.before(SPEC.boundary_ms(boundary + 1)), SPEC, tmp_path / f"db{boundary}", seed)
        assert_same_features(stream_feature_batch(state, SPEC, boundary, log.items),
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
