"""TRAIL in the stream: the worker serving an ONNX bundle agrees with the backtest, and a bad bundle
never stops or loses the stream (it falls back to the baseline, says so, and is swapped in once fixed)."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from models.datasets import load_dataset
from schemas import TREND_V1, validator
from streams.scoring_loop import top_k_order
from tests.streamkit import Replay, by_step

pytestmark = [pytest.mark.broker, pytest.mark.timeout(400)]
ML100K_WINDOWS = ["--slot-s", "86400", "--bucket-s", "604800", "--n-buckets", "8", "--allowed-lateness-s", "86400"]
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def ml100k():
    return load_dataset("ml-100k")


def first_weeks(log, weeks: int) -> list[dict]:
    cutoff = int(log.ts_ms.min()) + weeks * 7 * DAY_MS
    return [e for e in log.iter_events() if e["ts"] < cutoff]


def start_ml100k_worker(replay: Replay, log, scorer: str, *extra: str) -> None:
    from infra.kafka_config import KafkaSettings
    from streams.producer import produce_items

    replay.extra_args = [*ML100K_WINDOWS, "--scorer", scorer, "--min-event-time", "1990-01-01", *extra]
    worker = replay.start_worker()
    replay.wait_assigned()
    produce_items(KafkaSettings(bootstrap=replay.bootstrap), replay.topics["items"], log.items)
    worker.wait_for(lambda s: s.get("catalogue_items", 0) >= len(log.items), 60, "catalogue stored")


def wait_for_end(replay: Replay, end_ms: int, timeout_s: float = 240) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = replay.records(idle_exit_s=5)
        if any(r["window"]["end"] >= end_ms for r in records):
            return records
    raise TimeoutError("final step never arrived: " + replay.workers[-1].log_tail(3000))


def assert_published_explanations_are_faithful(records: list[dict]) -> None:
    """Every record validates; every explanation passes the checker and states the forecast's direction."""
    from models.faithfulness import check_explanation

    check = validator(TREND_V1)
    for r in records:
        check(r)
        faithful, consistent = check_explanation(r["explanation"], r["signals"], r["predicted_count"],
                                                 r["signals"]["last_count"], r.get("title", ""))
        assert faithful and consistent, r
        assert r["explanation_source"] in ("model", "template")


def test_live_trends_equal_the_backtest_path_for_the_same_steps(make_replay, unique_topic, tmp_path, ml100k,
                                                               tiny_trail_bundle, tiny_trail_model):
    from models.backtest_data import feature_batch_at
    from models.trail_scorer import load_trail_scorer

    events = first_weeks(ml100k, 12)
    replay = make_replay(unique_topic("parity"), tmp_path, top_k=5)
    start_ml100k_worker(replay, ml100k, str(tiny_trail_bundle))
    replay.produce(events)
    last_end = max(e["ts"] for e in events) // DAY_MS * DAY_MS
    records = wait_for_end(replay, last_end)
    steps = by_step(records)
    replay.stop()
    assert_published_explanations_are_faithful(records)

    torch_scorer = load_trail_scorer(str(tiny_trail_model))
    spec = ml100k.default_spec()
    log = ml100k.before(max(e["ts"] for e in events) + 1)
    compared = 0
    for end_ms in sorted(steps)[8 * 7::7]:  # weekly, once the window is full
        batch = feature_batch_at(log, spec, end_ms // DAY_MS)
        forecast = torch_scorer.forecast(batch)
        expected = top_k_order(batch.item_ids, forecast, 5)
        live = steps[end_ms]
        assert [r["item_id"] for r in live] == [batch.item_ids[i] for i in expected], end_ms
        np.testing.assert_allclose([r["predicted_count"] for r in live], forecast[expected], rtol=1e-4, atol=1e-4)
        assert [r["recent_counts"] for r in live] == [batch.bucket_counts[i].tolist() for i in expected]
        assert {r["model"]["name"] for r in live} == {tiny_trail_bundle.name}  # the bundle, not the fallback
        compared += 1
    assert compared >= 4


def test_corrupt_bundle_falls_back_to_the_baseline_then_is_swapped_in_without_a_restart(
        make_replay, unique_topic, tmp_path, ml100k, tiny_trail_bundle):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_trail_bundle, bundle)
    graph = bundle / "forecast.onnx"
    graph.write_bytes(graph.read_bytes()[:-16] + bytes(16))  # same size, different bytes

    events = first_weeks(ml100k, 10)
    half = len(events) // 2
    replay = make_replay(unique_topic("fallback"), tmp_path / "run", top_k=5)
    start_ml100k_worker(replay, ml100k, str(bundle), "--reload-check-s", "0")   # look at every step
    worker = replay.workers[0]
    startup_log = worker.log_tail(200_000)
    assert "is unusable" in startup_log and "forecast.onnx" in startup_log
    replay.produce(events[:half])
    worker.wait_for(lambda s: s.get("counted", 0) >= half, 120, "first half counted")
    before_swap = replay.records(idle_exit_s=3)
    assert before_swap and {r["model"]["name"] for r in before_swap} == {"velocity-baseline"}

    shutil.copytree(tiny_trail_bundle, bundle, dirs_exist_ok=True)  # the fixed bundle lands on disk
    (bundle / "manifest.json").touch()   # copytree kept the old mtime: this is the change the runtime sees
    replay.produce(events[half:])
    worker.wait_for(lambda s: s.get("counted", 0) >= len(events), 120, "all events counted")
    last_end = max(e["ts"] for e in events) // DAY_MS * DAY_MS
    records = wait_for_end(replay, last_end)
    status = worker.status()
    replay.stop()

    assert status["counted"] == len(events) and status["dlq"] == 0
    assert "reloading" in worker.log_tail(200_000)
    check = validator(TREND_V1)
    for record in records:
        check(record)
    assert records[-1]["model"]["name"] != "velocity-baseline"
    assert records[-1]["model"]["sha256"]


def test_the_catalogue_is_read_before_the_clicks_and_not_again_after_a_crash(make_replay, unique_topic, tmp_path,
                                                                             ml100k, tiny_trail_bundle):
    """Issue 17 (no cold-start stall), end to end: the worker reads the catalogue's texts as the records arrive,
    its steps read none, and after a SIGKILL and a restart on the same disk neither steps nor the read-ahead
    read any again (counted by the runtime in status.json, not timed)."""
    events = first_weeks(ml100k, 10)
    half = len(events) // 2
    texts = {text for text in ml100k.items.values() if text}
    replay = make_replay(unique_topic("warm"), tmp_path, top_k=5)
    start_ml100k_worker(replay, ml100k, str(tiny_trail_bundle))
    worker = replay.workers[0]
    read = worker.wait_for(lambda s: s.get("text_vectors_read_ahead", 0) >= len(texts)
                           and s.get("text_vectors_pending") == 0, 120, "catalogue read ahead")
    assert read["text_vectors_read_ahead"] == len(texts)
    replay.produce(events[:half])
    before = wait_for_end(replay, max(e["ts"] for e in events[:half]) // DAY_MS * DAY_MS)
    status = worker.status()
    assert status["steps_scored"] > 0 and status["text_vectors_read_in_steps"] == 0
    assert {r["model"]["name"] for r in before} == {tiny_trail_bundle.name}

    worker.kill()
    restarted = replay.start_worker()
    replay.wait_assigned()
    replay.produce(events[half:])
    after = wait_for_end(replay, max(e["ts"] for e in events) // DAY_MS * DAY_MS)
    status = restarted.status()
    replay.stop()
    assert status["scorer"] == tiny_trail_bundle.name and len(after) > len(before)
    assert status["text_vectors_read_in_steps"] == 0 and status["text_vectors_read_ahead"] == 0
