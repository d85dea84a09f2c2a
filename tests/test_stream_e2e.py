"""End-to-end behaviour of the worker over the embedded broker (TCP): produce -> worker -> trending-items.

Each test runs real `trail worker` processes with their own app id and topics on the session broker.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time

import orjson
import pytest

from schemas import DLQ_RECORD_V1, TREND_V1, validator
from tests.streamkit import DAY_MS, Replay, by_step, comparable, make_events, recount

N_BUCKETS = 4

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]


def assert_counts_match_recount(steps: dict[int, list[dict]], events: list[dict]) -> None:
    for end_ms, records in steps.items():
        truth = recount(events, end_ms // DAY_MS, N_BUCKETS)
        for record in records:
            assert record["recent_counts"] == truth[record["item_id"]], (end_ms, record["item_id"])


def wait_for_step(replay: Replay, end_ms: int, timeout_s: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = replay.records(idle_exit_s=4)
        if any(r["window"]["end"] == end_ms for r in records):
            return records
    raise TimeoutError(f"no step ending {end_ms}: " + replay.workers[-1].log_tail(2000))


def last_step_end(events: list[dict]) -> int:
    """With the idle flush, the last scored boundary is the slot of the newest event."""
    return (max(e["ts"] for e in events) // DAY_MS) * DAY_MS


def test_trend_records_validate_and_counts_equal_a_recount(make_replay, unique_topic, tmp_path,
                                                           consumer_args: tuple[str, ...] = ()):
    """With the default consumer loop (the batch drain: clicks reach the agent in bulk); test_consumer_loops.py
    runs it again with faust's own loop."""
    events = make_events(6000, n_items=12, days=35)
    replay = make_replay(unique_topic("e2e"), tmp_path, top_k=12)
    replay.extra_args = list(consumer_args)
    replay.start_worker()
    replay.wait_assigned()
    replay.produce(events)
    records = wait_for_step(replay, last_step_end(events))
    replay.stop()

    check = validator(TREND_V1)
    for record in records:
        check(record)
    steps = by_step(records)
    ends = sorted(steps)
    assert ends == list(range(ends[0], ends[-1] + DAY_MS, DAY_MS)), "a scoring step is missing"
    assert len(ends) >= 30
    assert_counts_match_recount(steps, events)
    for records_of_step in steps.values():
        forecasts = [r["predicted_count"] for r in records_of_step]
        assert forecasts == sorted(forecasts, reverse=True)
        assert [r["rank"] for r in records_of_step] == list(range(1, len(records_of_step) + 1))
        assert all(r["explanation"] for r in records_of_step)


def test_bad_events_land_in_the_dlq_with_a_reason_and_good_ones_are_counted(make_replay, unique_topic, tmp_path):
    good = make_events(400, n_items=5, days=20, seed=3)
    far_future_ms = int((time.time() + 10 * 365 * 86400) * 1000)
    bad = [
        b"{not json",
        orjson.dumps({"ts": good[0]["ts"]}),                                   # missing item_id
        orjson.dumps({"item_id": "x"}),                                        # missing ts
        orjson.dumps({"item_id": "x", "ts": "yesterday"}),                     # wrong type
        orjson.dumps({"item_id": 42, "ts": good[0]["ts"]}),                    # wrong type
        orjson.dumps({"item_id": "x" * 100_000, "ts": good[0]["ts"]}),         # huge string
        orjson.dumps({"item_id": "x", "ts": far_future_ms}),                   # far future
        orjson.dumps([{"item_id": "ok-in-envelope", "ts": good[1]["ts"]}, {"item_id": None, "ts": 1}]),
        b"[1, 2",
    ]
    replay = make_replay(unique_topic("dlq"), tmp_path, top_k=10)
    worker = replay.start_worker()
    replay.wait_assigned()
    replay.produce_raw(bad)
    replay.produce(good)
    replay.wait_counted(len(good) + 1)
    records = wait_for_step(replay, last_step_end(good))
    dlq = replay.records("dlq", idle_exit_s=3)
    status = worker.status()
    replay.stop()

    check = validator(DLQ_RECORD_V1)
    for record in dlq:
        check(record)
    assert len(dlq) == 9
    originals = {base64.b64decode(r["original"]) for r in dlq}
    assert b"{not json" in originals and b"[1, 2" in originals
    reasons = " | ".join(r["reason"] for r in dlq)
    for expected in ("malformed JSON", "item_id", "ts", "256 characters", "ahead of wall-clock"):
        assert expected in reasons
    assert [r["index"] for r in dlq if r["index"] is not None] == [1]
    assert status["dlq"] == 9 and status["counted"] == len(good) + 1
    assert_counts_match_recount(by_step(records), good + [{"item_id": "ok-in-envelope", "ts": good[1]["ts"],
                                                           "event_id": "envelope"}])


def test_sigkilled_worker_restarts_without_losing_or_double_counting(make_replay, unique_topic, tmp_path):
    events = make_events(60_000, n_items=12, days=35, seed=11)
    replay = make_replay(unique_topic("kill"), tmp_path, top_k=12)
    worker = replay.start_worker()
    replay.wait_assigned()
    chunks = [events[i:i + 3000] for i in range(0, len(events), 3000)]
    killed = threading.Event()

    def produce_all() -> None:
        for k, chunk in enumerate(chunks):
            if k == 10:   # the second half waits for the kill, so the kill is mid-stream however slow the worker
                killed.wait(150)
            replay.produce(chunk, envelope=10)
            time.sleep(0.4)

    producing = threading.Thread(target=produce_all)
    producing.start()
    worker.wait_for(lambda s: s.get("counted", 0) >= 15_000, 120, "15,000 counted")
    worker.kill()
    killed.set()
    replay.start_worker()  # same worker id and data dir: local RocksDB + changelog recovery
    producing.join()
    records = wait_for_step(replay, last_step_end(events), timeout_s=180)
    replay.stop()
    assert_counts_match_recount(by_step(records), events)


def test_two_workers_give_the_same_global_top_k_as_one(make_replay, unique_topic, tmp_path):
    events = make_events(8000, n_items=30, days=30, seed=5)
    one = make_replay(unique_topic("one"), tmp_path / "one", top_k=8)
    two = make_replay(unique_topic("two"), tmp_path / "two", top_k=8)
    one.start_worker()
    two.start_worker("a")
    two.start_worker("b")
    one.wait_assigned()
    two.wait_assigned()
    assert all(w.status()["assigned"] for w in two.workers), "both workers should own partitions"
    one.produce(events)
    two.produce(events)
    end = last_step_end(events)
    steps_one, steps_two = by_step(wait_for_step(one, end)), by_step(wait_for_step(two, end))
    one.stop()
    two.stop()
    assert sorted(steps_one) == sorted(steps_two)
    for step in steps_one:
        assert comparable(steps_one[step]) == comparable(steps_two[step])


def test_replaying_a_file_at_two_speeds_gives_identical_trends(make_replay, unique_topic, tmp_path):
    events = make_events(3000, n_items=10, days=28, seed=9)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    results = []
    for speed in ("0", str(28 * 86400 / 6)):   # as fast as possible, and 28 days in ~6 s
        replay = make_replay(unique_topic("speed"), tmp_path / speed, top_k=10)
        replay.start_worker()
        replay.wait_assigned()
        subprocess.run([sys.executable, "-m", "streams.cli", "produce", str(path), "--bootstrap", replay.bootstrap,
                        "--topic", replay.topics["clicks"], "--speed", speed, "--envelope", "20", "--quiet"],
                       check=True, capture_output=True)
        results.append(by_step(wait_for_step(replay, last_step_end(events))))
        replay.stop()
    fast, slow = results
    assert sorted(fast) == sorted(slow)
    for step in fast:
        assert comparable(fast[step]) == comparable(slow[step])


def test_workers_joining_and_leaving_mid_stream_keep_every_step_exact(make_replay, unique_topic, tmp_path):
    """Rebalances while data flows and input partitions go idle between bursts (a 2-s idleness timeout and
    3-s pauses): every step from the first to the last is emitted, and its counts equal a recount."""
    events = make_events(36_000, n_items=12, days=35, seed=13)
    replay = make_replay(unique_topic("rebalance"), tmp_path, top_k=12)
    replay.extra_args = ["--source-idle-timeout-s", "2"]
    first = replay.start_worker("a")
    replay.wait_assigned()
    chunks = [events[i:i + 2000] for i in range(0, len(events), 2000)]
    produced = threading.Semaphore(0)

    def produce_in_bursts() -> None:
        for k, chunk in enumerate(chunks):
            replay.produce(chunk, envelope=10)
            produced.release()
            time.sleep(3.0 if k % 4 == 3 else 0.3)   # pauses longer than the idleness timeout

    producing = threading.Thread(target=produce_in_bursts)
    producing.start()
    for action in (lambda: replay.start_worker("b"), lambda: replay.start_worker("c"), first.stop):
        for _ in range(4):   # after chunks 4, 8 and 12 of 18
            produced.acquire()
        assert producing.is_alive(), "the stream ended before the rebalance: nothing mid-stream tested"
        action()
    producing.join()
    records = wait_for_step(replay, last_step_end(events), timeout_s=180)
    replay.stop()
    steps = by_step(records)
    assert sorted(steps) == list(range(min(steps), max(steps) + DAY_MS, DAY_MS)), "a step is missing"
    assert_counts_match_recount(steps, events)
