"""Operators and subscribers: a real Prometheus scrapes a worker, headless Chromium renders the live page,
and `/readyz` follows table recovery. Real worker processes on the session's embedded broker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from infra.kafka_config import KafkaSettings
from infra.procs import free_port
from streams.producer import produce_items
from tests.observekit import (
    CHROMIUM_NAMES,
    PrometheusServer,
    binary_or_skip,
    dashboard_exprs,
    dump_dom,
    get_json,
    poll,
    rendered_items,
    screenshot,
)
from tests.streamkit import BASE_TS_MS, DAY_MS, by_step, make_events

pytestmark = pytest.mark.broker
REPO_ROOT = Path(__file__).resolve().parent.parent

# status.json field -> the Prometheus counter that must carry the same value
STATUS_TO_METRIC = {
    "events": "trail_events_total",
    "counted": "trail_events_counted_total",
    "duplicates": "trail_duplicate_events_total",
    "late": "trail_late_events_total",
    "redelivered_skipped": "trail_redelivered_skipped_total",
    "dlq_internal": "trail_dlq_internal_records_total",
    "dlq_bad_signature": "trail_dlq_bad_signature_records_total",
    "catalogue_items": "trail_catalogue_items_total",
    "steps_scored": "trail_steps_total",
    "assignments": "trail_rebalances_total",
    "trends_emitted": "trail_trend_records_total",
    "explanations_generated": "trail_explanations_generated_total",
    "explanations_replaced": "trail_explanations_replaced_total",
    "scorer_fallbacks": "trail_scorer_fallbacks_total",
    "text_vectors_read_in_steps": "trail_text_vectors_read_in_steps_total",
    "text_vectors_read_ahead": "trail_text_vectors_read_ahead_total",
    "text_vectors_dropped": "trail_text_vectors_dropped_total",
    "text_vectors_pending": "trail_text_vectors_pending",
}


def expected_series(status: dict) -> dict[tuple, float]:
    """The scraped series a worker with this status.json must show."""
    expected = {(metric,): float(status[field]) for field, metric in STATUS_TO_METRIC.items()}
    for reason, count in status["dlq_by_reason"].items():
        expected[("trail_dlq_records_total", ("reason", reason))] = float(count)
    expected[("trail_step_seconds_count",)] = float(status["steps_scored"])   # one step timed per step emitted
    return expected


def test_prometheus_reads_back_counters_equal_to_the_worker_status(make_replay, tmp_path):
    prometheus_bin = binary_or_skip("prometheus")
    port = free_port()
    replay = make_replay("obs-prom", tmp_path / "state", extra_args=["--metrics-port", str(port)])
    worker = replay.start_worker()
    events = make_events(4000, 12, 35)
    with PrometheusServer(prometheus_bin, [f"127.0.0.1:{port}"], tmp_path / "prometheus") as prometheus:
        replay.wait_assigned()
        replay.produce(events + events[:100])                      # the last 100 are duplicates
        replay.produce_raw([b"not json", b'{"item_id": "x"}'])     # two DLQ reason codes
        records = replay.records(idle_exit_s=8.0)                  # every step, the idle flush's included
        assert records

        def scraped_equals_status():
            status = worker.status()
            scraped = prometheus.scraped_values()
            expected = expected_series(status) if status else {}
            matches = status.get("trends_emitted") == len(records) and all(
                scraped.get(key) == value for key, value in expected.items())
            return (status, scraped) if matches else None

        status, scraped = poll(scraped_equals_status, 60, "Prometheus values equal to status.json")
        # every query of the Grafana dashboard in infra/ parses and has data for this worker
        empty = [expr for expr in dashboard_exprs() if not prometheus.query(expr)]
        assert not empty, f"dashboard queries without data: {empty}"
    assert status["counted"] == status["events"] == len(events) and status["duplicates"] == 100
    assert status["dlq_by_reason"] == {"malformed": 1, "schema": 1}
    assert status["steps_scored"] == len(by_step(records)) > 0
    info = [dict(key[1:]) for key in scraped if key[0] == "trail_scorer_info"]
    assert info and info[0]["name"] == status["scorer"]
    lagged = {dict(key[1:])["partition"] for key in scraped if key[0] == "trail_watermark_lag_seconds"}
    assert lagged == {"0", "1", "2", "3"}
    assert scraped[("trail_forecast_seconds_count",)] > 0 and scraped[("trail_ready",)] == 1


def ml100k_titles(n_items: int) -> dict[str, str]:
    from models.datasets import load_dataset

    texts = list(load_dataset("ml-100k").items.values())
    return {f"item-{k}": texts[k] for k in range(n_items)}


def test_live_page_renders_the_emitted_top_k(make_replay, tmp_path):
    chromium = binary_or_skip(*CHROMIUM_NAMES)
    port = free_port()
    replay = make_replay("obs-live", tmp_path / "state", top_k=8, extra_args=["--metrics-port", str(port)])
    replay.start_worker()
    replay.wait_assigned()
    titles = ml100k_titles(12)
    produce_items(KafkaSettings(bootstrap=replay.bootstrap), replay.topics["items"], titles)
    poll(lambda: replay.workers[0].status().get("catalogue_items", 0) >= 12, 60, "catalogue stored")
    replay.produce(make_events(3000, 12, 42))
    steps = by_step(replay.records(idle_exit_s=8.0))
    last_end, last_step = max(steps.items())
    url = f"http://127.0.0.1:{port}/"
    poll(lambda: [r["window"]["end"] for r in get_json(url + "api/live")[1].get("records", [])[:1]] == [last_end],
         30, "the live endpoint holding the last step")

    items = rendered_items(dump_dom(chromium, url))
    shot = screenshot(chromium, url, tmp_path / "live-view.png")
    if os.environ.get("TRAIL_LIVE_SCREENSHOT"):   # refresh docs/live-view.png: TRAIL_LIVE_SCREENSHOT=docs/live-view.png
        shutil.copyfile(shot, os.environ["TRAIL_LIVE_SCREENSHOT"])
    assert [(i["rank"], i["item_id"]) for i in items] == [(r["rank"], r["item_id"]) for r in last_step]
    for item, record in zip(items, last_step, strict=True):
        assert item["title"] == record["title"] == titles[record["item_id"]]
        assert item["counts"] == record["recent_counts"]
        assert item["forecast"] == pytest.approx(record["predicted_count"])
        assert item["explanation"] == record["explanation"]
        assert item["source"] == item["source_attr"] == record["explanation_source"]
        assert item["model"] == f"{record['model']['name']} {record['model']['version']}"


def produce_many_keys(replay, n_items: int) -> None:
    """One event per item over a few days: a changelog with about one record per item to recover."""
    replay.produce([{"item_id": f"k{i}", "ts": BASE_TS_MS + (i * 3 * DAY_MS) // n_items, "event_id": f"k{i}"}
                    for i in range(n_items)], envelope=500)


def watch_readyz(url: str, seen: list[tuple[int, dict]], stop: threading.Event) -> None:
    """Record every /readyz answer (from before the worker listens until `stop`)."""
    while not stop.is_set():
        code, body = get_json(url, timeout_s=2.0)
        if code:
            seen.append((code, body))
            if code == 200:
                return
        time.sleep(0.02)


def test_readyz_is_not_ready_during_recovery_and_ready_after_it(make_replay, tmp_path):
    n_items = 20_000   # ~20k changelog records: recovery takes seconds, many /readyz answers fall inside it
    replay = make_replay("obs-ready", tmp_path / "state")
    first = replay.start_worker()
    replay.wait_assigned()
    produce_many_keys(replay, n_items)
    replay.wait_counted(n_items, timeout_s=240)
    first.stop()
    shutil.rmtree(tmp_path / "state" / "w1")     # local RocksDB gone: the next start recovers the changelog

    port = free_port()
    seen: list[tuple[int, dict]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_readyz, args=(f"http://127.0.0.1:{port}/readyz", seen, stop))
    watcher.start()
    replay.extra_args = ["--metrics-port", str(port)]
    replay.workers.clear()
    worker = replay.start_worker()
    try:
        worker.wait_for(lambda s: s.get("counted", 0) == 0 and len(s.get("assigned", [])) == 4, 240, "recovered")
        watcher.join(60)
    finally:
        stop.set()
    assert seen and seen[-1][0] == 200 and seen[-1][1]["ready"] and not seen[-1][1]["recovering"]
    recovering = [body for code, body in seen if code == 503 and body["recovering"] and body["assigned"]]
    assert recovering, f"never saw a not-ready answer during recovery: {seen[:3]} ... {len(seen)} answers"
    cli = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "status", "--port", str(port)],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert cli.returncode == 0 and "ready" in cli.stdout, cli.stdout + cli.stderr
