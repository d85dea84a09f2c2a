"""PartitionState over a real RocksDB (rocksdict): exact counts under batching, re-delivery and trimming."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import rocksdict

from models.windows import WindowSpec, bucket_count_matrix
from streams.deltas import DeltaColumns, DeltaRouter, decode_deltas, encode_deltas
from streams.state import PartitionState

SPEC = WindowSpec(slot_s=60, bucket_s=300, n_buckets=3, allowed_lateness_s=60)


def open_db(path) -> rocksdict.Rdict:
    return rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))


def apply(state: PartitionState, db, source: int, watermark: int, columns: DeltaColumns,
          idle_end: int | None = None):
    """What the worker does per deltas message: compute, store, then accept into memory."""
    update = state.apply_deltas(source, watermark, columns, idle_end)
    for key, value in update.writes.items():
        db.put(key, value)
    state.accept(update)
    return update


def random_entries(rng, n: int, first_offset: int, slot_lo: int, slot_hi: int) -> DeltaColumns:
    return DeltaColumns(list(range(first_offset, first_offset + n)), [f"i{k}" for k in rng.integers(0, 25, n)],
                        rng.integers(slot_lo, slot_hi, n).tolist(), rng.integers(1, 5, n).tolist())


def table_bucket_counts(state: PartitionState, boundary: int) -> dict[str, list[int]]:
    snap = state.snapshot()
    matrix = bucket_count_matrix(snap.item_index, snap.slots, snap.counts, boundary, SPEC, len(snap.item_ids))
    return {item: row.tolist() for item, row in zip(snap.item_ids, matrix, strict=False) if row.sum()}


def reference_bucket_counts(all_columns: list[DeltaColumns], boundary: int) -> dict[str, list[int]]:
    items = [i for c in all_columns for i in c.items]
    names = sorted(set(items))
    index = np.asarray([names.index(i) for i in items])
    slots = np.asarray([s for c in all_columns for s in c.slots])
    counts = np.asarray([n for c in all_columns for n in c.counts])
    matrix = bucket_count_matrix(index, slots, counts, boundary, SPEC, len(names))
    return {item: row.tolist() for item, row in zip(names, matrix, strict=False) if row.sum()}


def test_batched_deltas_give_the_same_bucket_counts_as_one_pass(tmp_path):
    rng = np.random.default_rng(1)
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=1)
    applied = []
    for step in range(20):
        columns = random_entries(rng, 50, step * 50, step, step + 3)
        apply(state, db, 0, 0, columns)
        applied.append(columns)
    boundary = 21
    assert table_bucket_counts(state, boundary) == reference_bucket_counts(applied, boundary)


def test_redelivered_offsets_are_skipped_not_counted_twice(tmp_path):
    rng = np.random.default_rng(2)
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=1)
    first = random_entries(rng, 40, 0, 0, 5)
    apply(state, db, 0, 0, first)
    overlapping = DeltaColumns(first.offsets[20:] + [40, 41], first.items[20:] + ["x", "y"],
                               first.slots[20:] + [4, 4], first.counts[20:] + [1, 1])
    update = apply(state, db, 0, 0, overlapping)
    assert update.skipped_entries == 20 and update.applied_events == 2
    extra = DeltaColumns([40, 41], ["x", "y"], [4, 4], [1, 1])
    assert table_bucket_counts(state, 6) == reference_bucket_counts([first, extra], 6)


def test_state_reloads_its_bookkeeping_from_the_store(tmp_path):
    rng = np.random.default_rng(3)
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=2)
    apply(state, db, 0, 10 * 60_000, random_entries(rng, 30, 0, 2, 6))
    apply(state, db, 1, 9 * 60_000, random_entries(rng, 30, 0, 2, 6))
    reloaded = PartitionState(0, db, SPEC, n_sources=2)
    assert reloaded.applied == state.applied == {0: 29, 1: 29}
    assert reloaded.watermark_slot() == SPEC.watermark_slot(9 * 60_000) == 8
    assert reloaded.due_boundaries() == list(range(state.next_boundary, 9))


def test_watermark_waits_for_every_source_partition(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=2)
    apply(state, db, 0, 12 * 60_000, DeltaColumns([0], ["a"], [3], [1]))
    assert state.due_boundaries() == []
    assert state.due_boundaries(idle=True) == list(range(4, 13))
    apply(state, db, 1, 10 * 60_000, DeltaColumns())
    assert state.due_boundaries() == list(range(4, 10))


def test_late_events_are_counted_and_reported(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=1)
    apply(state, db, 0, 0, DeltaColumns([0], ["a"], [5], [1]))
    for boundary in range(6, 9):
        state.mark_scored(boundary)
    update = apply(state, db, 0, 0, DeltaColumns([1, 2], ["a", "b"], [6, 8], [2, 3]))
    assert update.late_events == 2 and update.applied_events == 5
    assert table_bucket_counts(state, 9) == {"a": [0, 0, 3], "b": [0, 0, 3]}  # late ones are still counted


def test_router_splits_envelopes_by_item_partition_and_drops_duplicate_ids():
    router = DeltaRouter(n_partitions=4, spec=SPEC, dedup_capacity=100)
    t0 = 1_700_000_040_000  # a minute boundary
    envelope = orjson.dumps([{"item_id": "a", "ts": t0, "event_id": "e1"}, {"item_id": "b", "ts": t0},
                             {"item_id": "a", "ts": t0 + 1000, "event_id": "e1"}, {"item_id": "a", "ts": t0 + 60_000}])
    batch = router.route([(2, 7, envelope), (2, 8, b"{oops")], max_ts_ms=10**15)
    slot = t0 // 60_000
    assert batch.events == 3 and batch.duplicates == 1 and len(batch.rejections) == 1
    entries = {(item, slot): count for (src, _), cols in batch.deltas.items()
               for item, slot, count in zip(cols.items, cols.slots, cols.counts, strict=False)}
    assert entries == {("a", slot): 1, ("b", slot): 1, ("a", slot + 1): 1}
    assert batch.watermarks == {2: t0 + 60_000}
    (source, target), columns = next(iter(batch.deltas.items()))
    [message] = encode_deltas(source, t0 + 60_000, columns)
    assert decode_deltas(message, n_sources=4, max_ts_ms=10**15)[2] == columns


def test_heavy_hitters_keep_the_heaviest_items_within_capacity():
    from streams.heavy_hitters import HeavyHitters

    hitters = HeavyHitters(capacity=3)
    hitters.add(["a", "b", "c", "d", "e", "f", "g"], [5, 1, 4, 1, 3, 1, 9])
    assert hitters.candidates() == ["a", "c", "g"]
    hitters.decay(0.5)
    hitters.add(["b"] * 3, [4, 4, 4])
    assert hitters.candidates() == ["a", "b", "g"] and len(hitters) == 3
    assert [hitters.weight(i) for i in ("a", "b", "g", "c")] == [2.5, 12.0, 4.5, 0.0]


def test_heavy_hitter_weights_survive_decay_far_past_the_float_range():
    """Decay scales one factor; the stored weights are rescaled before it underflows, the order unchanged."""
    from streams.heavy_hitters import HeavyHitters

    hitters = HeavyHitters(capacity=2)
    for step in range(3000):   # 0.5 ** 3000 is far below the smallest float
        hitters.decay(0.5)
        hitters.add(["steady", "rare"] if step % 100 == 0 else ["steady"], [1, 1] if step % 100 == 0 else [1])
    assert hitters.candidates() == ["rare", "steady"]
    assert hitters.weight("steady") == pytest.approx(2.0, rel=1e-9) and 0 < hitters.weight("rare") < 1e-20


def test_scoring_snapshot_covers_only_candidates_and_survives_a_reload(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=1, max_candidates=2)
    apply(state, db, 0, 0, DeltaColumns([0, 1, 2], ["hot", "warm", "cold"], [3, 3, 3], [9, 5, 1]))
    apply(state, db, 0, 0, DeltaColumns([3, 4, 5], ["hot", "warm", "cold"], [4, 4, 4], [9, 5, 1]))
    assert state.snapshot().item_ids == ["hot", "warm"]
    assert PartitionState(0, db, SPEC, n_sources=1, max_candidates=2).snapshot().item_ids == ["hot", "warm"]


def test_an_idle_source_stops_holding_the_watermark_and_rejoins_when_it_sends(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=2)
    apply(state, db, 0, 30 * 60_000, DeltaColumns([0], ["a"], [3], [1]))
    assert state.watermark_slot() is None                      # source 1 may still report
    apply(state, db, 1, -1, DeltaColumns(), idle_end=0)       # its reader has read it all: idle
    assert state.watermark_slot() == 29
    apply(state, db, 1, 12 * 60_000, DeltaColumns())
    assert state.watermark_slot() == 29                        # rejoined behind: the watermark never goes back
    apply(state, db, 1, 40 * 60_000, DeltaColumns())
    apply(state, db, 0, 45 * 60_000, DeltaColumns())
    assert state.watermark_slot() == 39                        # both active: the minimum again
    apply(state, db, 1, 40 * 60_000, DeltaColumns(), idle_end=5)
    apply(state, db, 0, 60 * 60_000, DeltaColumns())
    assert state.watermark_slot() == 59                        # source 1 idle again
    for boundary in state.due_boundaries(limit=100):
        state.mark_scored(boundary)
    update = state.apply_deltas(1, 41 * 60_000, DeltaColumns([1], ["late"], [40], [2]))
    assert update.late_events == 2 and update.applied_events == 2   # behind the watermark: counted, reported late


def test_an_event_from_years_ago_does_not_make_every_slot_since_due(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=1)
    now_slot = 10_000_000
    update = apply(state, db, 0, now_slot * 60_000, DeltaColumns([0, 0], ["old", "new"], [5, now_slot], [1, 1]))
    assert update.late_events == 1 and update.applied_events == 2
    assert len(state.due_boundaries()) <= 16
    assert state.next_boundary >= now_slot - 4 * SPEC.window_slots


def test_empty_windows_after_a_gap_are_one_progress_report(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=1)
    apply(state, db, 0, 5 * 60_000, DeltaColumns([0], ["a"], [4], [1]))
    for boundary in range(5, 5 + SPEC.window_slots + 1):
        state.mark_scored(boundary)
    apply(state, db, 0, 10_000 * 60_000, DeltaColumns())
    assert state.empty_until(state.reach_slot()) == state.reach_slot()


def test_a_repeated_event_id_is_counted_once_whichever_worker_read_it_and_expires_with_the_window(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=2)
    first = DeltaColumns([0, 0], ["a", "a"], [3, 3], [1, 1], ["e1", "e2"])
    assert apply(state, db, 0, 3 * 60_000, first).applied_events == 2
    # the same ids again, read by another worker from another source partition, one new id among them
    again = DeltaColumns([7, 7, 7], ["a", "a", "a"], [3, 3, 4], [1, 1, 1], ["e1", "e2", "e3"])
    update = apply(state, db, 1, 4 * 60_000, again)
    assert (update.applied_events, update.duplicate_events) == (1, 2)
    reloaded = PartitionState(0, db, SPEC, n_sources=2)   # a restart: the ids are in the store
    update = reloaded.apply_deltas(1, 4 * 60_000, DeltaColumns([8], ["a"], [4], [1], ["e3"]))
    assert (update.applied_events, update.duplicate_events) == (0, 1)
    expiry = reloaded.expired_event_ids(oldest_slot=4)
    assert set(expiry) == {b"e:e1", b"e:e2"}


def test_rings_of_items_no_longer_touched_are_deleted_once_they_leave_the_window(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=1)
    apply(state, db, 0, 2 * 60_000, DeltaColumns([0, 1], ["gone", "kept"], [1, 1], [3, 1]))
    apply(state, db, 0, 30 * 60_000, DeltaColumns([2], ["kept"], [29], [1]))
    boundary = 30   # a bucket boundary (5 slots a bucket); the window holds slots 16..30
    writes = state.commit_scored(boundary)
    assert writes[b"i:gone"] is None and b"i:kept" not in writes
    assert "gone" not in state.hitters.candidates()


def test_a_source_waking_up_makes_every_idle_source_declare_again(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=3)
    for source in range(3):
        apply(state, db, source, 10 * 60_000, DeltaColumns([0], [f"i{source}"], [9], [1]))
    for source in range(3):
        apply(state, db, source, 10 * 60_000, DeltaColumns(), idle_end=1)
    apply(state, db, 0, 50 * 60_000, DeltaColumns([1], ["i0"], [49], [1]))   # source 0 resumes first
    assert state.watermark_slot() == 9          # held by 1 and 2 until they send or declare again
    apply(state, db, 1, 10 * 60_000, DeltaColumns(), idle_end=1)
    apply(state, db, 2, 48 * 60_000, DeltaColumns([1], ["i2"], [47], [1]))
    assert state.watermark_slot() == 47


def test_an_idle_source_whose_partition_has_new_messages_holds_the_watermark(tmp_path):
    """Its reader declared it idle at end offset 7, then stalled (a rebalance) while messages arrived: the
    others must not drag the watermark past the events it has not sent yet."""
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=2)
    apply(state, db, 0, 10 * 60_000, DeltaColumns([0], ["a"], [9], [1]))
    apply(state, db, 1, 10 * 60_000, DeltaColumns([6], ["b"], [9], [1]))
    assert state.watermark_slot() == 9
    apply(state, db, 1, 10 * 60_000, DeltaColumns(), idle_end=7)
    apply(state, db, 0, 30 * 60_000, DeltaColumns([1], ["a"], [29], [1]))
    assert state.advance_relies_on_idle()
    state.confirm_idle({1: 9})                   # two messages since the declaration
    assert not state.advance_relies_on_idle() and state.watermark_slot() == 9
    apply(state, db, 1, 30 * 60_000, DeltaColumns([7, 8], ["b", "b"], [20, 28], [1, 1]))
    assert state.watermark_slot() == 29


def test_an_idle_source_still_at_its_end_offset_lets_the_watermark_move(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=2)
    apply(state, db, 0, 10 * 60_000, DeltaColumns([0], ["a"], [9], [1]))
    apply(state, db, 1, 10 * 60_000, DeltaColumns(), idle_end=0)
    apply(state, db, 0, 30 * 60_000, DeltaColumns([1], ["a"], [29], [1]))
    assert state.advance_relies_on_idle()
    state.confirm_idle({1: 0})
    assert state.watermark_slot() == 29 and not state.advance_relies_on_idle()
    apply(state, db, 1, 10 * 60_000, DeltaColumns(), idle_end=0)
    apply(state, db, 0, 40 * 60_000, DeltaColumns([2], ["a"], [39], [1]))
    state.confirm_idle({})                       # end offsets unknown (broker unreachable): not idle
    assert state.watermark_slot() == 29


def test_dlq_records_are_published_once_across_a_re_read_and_a_rebuild(tmp_path):
    db = open_db(tmp_path / "p0")
    state = PartitionState(0, db, SPEC, n_sources=2)
    first = DeltaColumns(rejected=[(3, {"offset": 3}), (3, {"offset": 3, "index": 1}), (7, {"offset": 7})])
    assert [r["offset"] for r in apply(state, db, 1, 0, first).dlq_records] == [3, 3, 7]
    assert apply(state, db, 1, 0, first).dlq_records == []          # the reader re-read them after a crash
    rebuilt = PartitionState(0, db, SPEC, n_sources=2)
    again = DeltaColumns(rejected=[(7, {"offset": 7}), (9, {"offset": 9})])
    assert [r["offset"] for r in apply(rebuilt, db, 1, 0, again).dlq_records] == [9]
    assert apply(rebuilt, db, 0, 0, DeltaColumns(rejected=[(7, {"offset": 7})])).dlq_records != []  # per source


def test_messages_applied_as_one_write_equal_the_same_messages_applied_one_by_one(tmp_path):
    """Stage 2 applies a batch of deltas messages as one write (`apply_messages`): rings, event ids, applied
    offsets, watermarks, idleness and the counters must come out as if each message were applied alone."""
    rng = np.random.default_rng(11)
    messages, next_offset = [], [0, 0, 0]
    for k in range(60):
        source = int(rng.integers(0, 3))
        if k % 17 == 16:   # an idle declaration, then the source's data again later
            messages.append((source, next_offset[source] * 1000, DeltaColumns(), next_offset[source]))
            continue
        first = max(0, next_offset[source] - int(rng.integers(0, 4)))   # some entries re-delivered
        n = int(rng.integers(1, 8))
        ids = [f"e{int(rng.integers(0, 40))}" if rng.random() < 0.3 else None for _ in range(n)]
        columns = DeltaColumns(list(range(first, first + n)), [f"i{int(x)}" for x in rng.integers(0, 12, n)],
                               [first // 3 + int(x) for x in rng.integers(0, 3, n)], rng.integers(1, 4, n).tolist(),
                               ids if any(ids) else [])
        next_offset[source] = first + n
        messages.append((source, (first + n) // 3 * 60_000, columns, None))
    one_db, batch_db = open_db(tmp_path / "one"), open_db(tmp_path / "batch")
    one, batched = PartitionState(0, one_db, SPEC, n_sources=3), PartitionState(0, batch_db, SPEC, n_sources=3)
    totals_one = [apply(one, one_db, *message) for message in messages]
    totals_batched, start = [], 0
    while start < len(messages):
        size = int(rng.integers(1, 9))
        update = batched.apply_messages(messages[start:start + size])
        for key, value in update.writes.items():
            batch_db.put(key, value)
        batched.accept(update)
        totals_batched.append(update)
        start += size
    for field in ("applied_events", "late_events", "skipped_entries", "duplicate_events"):
        assert sum(getattr(u, field) for u in totals_one) == sum(getattr(u, field) for u in totals_batched), field
    assert dict(one_db.items()) == dict(batch_db.items())
    assert (one.applied, one.source_max_ts_ms, one.idle_sources, one.next_boundary, one.max_data_slot) == (
        batched.applied, batched.source_max_ts_ms, batched.idle_sources, batched.next_boundary, batched.max_data_slot)
    assert sorted(one.hitters.candidates()) == sorted(batched.hitters.candidates())
