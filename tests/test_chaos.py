"""The pure parts of `trail chaos` (streams.chaos), without a broker: the schedule, the chunks around it,
the recount and the comparison of emitted records with it."""

from __future__ import annotations

import random

from streams import chaos
from streams.chaos import DAY_MS, Chunk, Fault
from streams.merge import record_id
from tests.streamkit import recount as streamkit_recount

MODEL = {"name": "velocity-baseline", "version": "1", "sha256": "0" * 64}


def trend(end_ms: int, rank: int, item: str, counts: list[int], generated_at: str = "t0") -> dict:
    window = {"end": end_ms, "slot_s": 86400, "bucket_s": 7 * 86400}
    return {"window": window, "rank": rank, "item_id": item, "recent_counts": counts, "model": MODEL,
            "generated_at": generated_at, "record_id": record_id(window, rank, MODEL)}


def test_the_schedule_is_seeded_spaced_and_has_every_kind():
    faults = chaos.plan_faults(20, 60_000, seed=5, chunk=500, big_chunk=5000)
    assert faults == chaos.plan_faults(20, 60_000, seed=5, chunk=500, big_chunk=5000)
    assert faults != chaos.plan_faults(20, 60_000, seed=6, chunk=500, big_chunk=5000)
    assert len(faults) == 20 and set(chaos.FAULT_KINDS) <= {f.kind for f in faults}
    positions = [f.at_event for f in faults]
    assert positions[0] >= 3000 and positions[-1] <= 57_000
    for before, fault in zip([0, *positions], faults, strict=False):
        assert fault.at_event - before >= (5500 if fault.kind == "kill_catchup" else 1000)


def test_a_schedule_holds_only_the_kinds_asked_for():
    kinds = ("kill", "remove_worker", "duplicates")
    faults = chaos.plan_faults(20, 60_000, seed=5, kinds=kinds, initial_workers=1)
    assert {f.kind for f in faults} == {"kill", "duplicates"}   # a remove would leave no worker: a kill instead
    try:
        chaos.plan_faults(3, 60_000, seed=5, kinds=("kill", "meteor"))
    except ValueError as exc:
        assert "meteor" in str(exc)
    else:
        raise AssertionError("expected a ValueError")


def test_the_worker_count_stays_between_one_and_the_partitions():
    kinds = chaos.keep_worker_count_valid(["remove_worker", "remove_worker", "add_worker", "add_worker",
                                           "add_worker", "add_worker"], initial=2, max_workers=4)
    assert kinds == ["remove_worker", "add_worker", "add_worker", "add_worker", "remove_worker", "add_worker"]


def test_a_log_too_short_for_the_faults_is_refused():
    try:
        chaos.plan_faults(20, 10_000, seed=1)
    except ValueError as exc:
        assert "too few" in str(exc)
    else:
        raise AssertionError("expected a ValueError")


def test_chunks_cover_the_log_and_a_big_one_precedes_each_catch_up_kill():
    faults = [Fault("kill", 2500), Fault("kill_catchup", 9000), Fault("malformed", 12_000)]
    chunks = chaos.plan_chunks(15_000, faults, chunk=1000, big_chunk=6000)
    assert chunks[0].start == 0 and chunks[-1].end == 15_000
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:], strict=False))
    assert all(c.end - c.start <= 1000 for c in chunks if not c.big)
    assert [c for c in chunks if c.big] == [Chunk(3000, 9000, big=True)]
    due = chaos.faults_by_chunk(chunks, faults)
    assert {chunks[i].end: [f.kind for f in fs] for i, fs in due.items()} == {
        2500: ["kill"], 9000: ["kill_catchup"], 12_000: ["malformed"]}


def test_duplicates_are_recent_events_already_sent():
    picks = chaos.pick_duplicates(10_000, 50, random.Random(1), recent=3000)
    assert len(picks) == 50 == len(set(picks)) and all(7000 <= i < 10_000 for i in picks)
    assert chaos.pick_duplicates(0, 50, random.Random(1)) == []


def test_the_recount_ignores_repeated_event_ids_and_matches_the_stream_tests():
    events = chaos.make_events(3000, 6, 30, seed=2)
    boundaries = chaos.expected_boundaries(events)
    assert boundaries[0] == (events[0]["ts"] // DAY_MS + 1) * DAY_MS
    assert boundaries[-1] == events[-1]["ts"] // DAY_MS * DAY_MS
    truth = chaos.recount(events + events[100:200], boundaries, n_buckets=4, slots_per_bucket=7)
    for boundary in boundaries:
        assert truth[boundary] == streamkit_recount(events, boundary // DAY_MS, 4)


def test_exact_records_compare_clean_even_when_a_step_is_emitted_twice():
    truth = {DAY_MS: {"a": [1, 2], "b": [0, 1]}, 2 * DAY_MS: {"a": [2, 2]}}
    records = [trend(DAY_MS, 1, "a", [1, 2]), trend(DAY_MS, 2, "b", [0, 1]), trend(2 * DAY_MS, 1, "a", [2, 2]),
               trend(2 * DAY_MS, 1, "a", [2, 2], generated_at="t1")]   # re-emitted after a crash
    result = chaos.compare(records, truth, top_k=5)
    assert result.exact and result.steps_emitted == 2 == result.steps_expected
    assert (result.duplicates_before_dedupe, result.duplicates_after_dedupe, result.conflicting_copies) == (1, 0, 0)


def test_lost_double_and_missing_are_summed_over_steps_and_items():
    truth = {DAY_MS: {"a": [1, 2], "b": [0, 3], "c": [1, 0]}, 2 * DAY_MS: {"a": [2, 2]}, 3 * DAY_MS: {"a": [1, 1]}}
    records = [trend(DAY_MS, 1, "a", [2, 2]),     # one double
               trend(DAY_MS, 2, "b", [0, 1]),     # two lost; "c" absent from a step with room: one more lost
               trend(2 * DAY_MS, 1, "a", [2, 2])]
    result = chaos.compare(records, truth, top_k=5)
    assert (result.lost, result.double, result.missing_steps) == (3, 1, [3 * DAY_MS])
    assert sorted((m.item_id, m.diff) for m in result.mismatches) == [("a", [1, 0]), ("b", [0, -2]), ("c", [-1, 0])]
    assert not result.exact


def test_a_full_step_may_leave_items_out():
    truth = {DAY_MS: {"a": [3], "b": [2], "c": [1]}}
    records = [trend(DAY_MS, 1, "a", [3]), trend(DAY_MS, 2, "b", [2])]
    assert chaos.compare(records, truth, top_k=2).exact


def test_a_copy_with_other_counts_is_a_conflict_and_checked_too():
    truth = {DAY_MS: {"a": [1]}}
    records = [trend(DAY_MS, 1, "a", [1]), trend(DAY_MS, 1, "a", [2])]
    result = chaos.compare(records, truth, top_k=5)
    assert result.conflicting_copies == 1 and result.double == 1 and result.duplicates_after_dedupe == 0


def test_suspects_are_faults_inside_an_off_bucket():
    start_slot = 100 - 2 * 7   # boundary slot 100, two weekly buckets: slots 86-92 and 93-99
    mismatch = chaos.Mismatch(100 * DAY_MS, "a", [1, 5], [1, 4])
    fault_times = [(start_slot + 1) * DAY_MS, 95 * DAY_MS, 101 * DAY_MS, 103 * DAY_MS]
    assert chaos.suspects(mismatch, fault_times, n_buckets=2, slots_per_bucket=7) == [1, 2]


def test_percentiles():
    assert chaos.percentiles([]) == {"n": 0, "p50": None, "max": None}
    assert chaos.percentiles([3.0, 1.0, 2.04, 9.0]) == {"n": 4, "p50": 2.0, "max": 9.0}
