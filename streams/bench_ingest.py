"""`trail bench ingest`: how fast one worker turns click messages into exact table counts.

Pre-produces N synthetic events (Zipf-skewed items over 100,000 ids, event times spread over 30 days,
single-event messages keyed by item or K-event envelopes) with confluent-kafka, then starts one worker
and times it from its first input batch to the moment its table holds all N counts.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from infra.kafka_config import KafkaSettings

DAY_MS = 86_400_000
BASE_TS_MS = 1_704_067_200_000


def add_bench_parser(benches) -> None:
    parser = benches.add_parser("ingest", help="events/s of one worker into exact table counts",
                                description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--envelope", type=int, default=100, help="events per message (1: single events)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--items", type=int, default=100_000, help="distinct item ids")
    parser.add_argument("--bootstrap", default=None,
                        help="use this Kafka instead of starting an embedded broker (memory storage)")
    parser.add_argument("--timeout-s", type=float, default=600)
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scorer", default="velocity", help="the worker's scorer: velocity or a bundle NAME|DIR")
    parser.set_defaults(func=run)


def synthetic_events(n: int, n_items: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = (rng.zipf(1.3, size=n) - 1) % n_items
    ts = BASE_TS_MS + np.sort(rng.integers(0, 30 * DAY_MS, size=n))
    users = rng.integers(0, 50_000, size=n)
    return [{"item_id": f"i{item}", "ts": int(t), "user_id": f"u{u}"}
            for item, t, u in zip(items, ts, users, strict=True)]


def measure_ingest(
    events: int, envelope: int, partitions: int, n_items: int, seed: int, bootstrap: str | None = None,
    scorer: str = "velocity", timeout_s: float = 600,
) -> dict:
    """Pre-produce synthetic events, run one worker until its table holds them all; the JSON result."""
    from infra.admin import TopicSpec, ensure_topics
    from infra.broker import EmbeddedBroker
    from streams.producer import ClickProducer

    embedded = None if bootstrap else EmbeddedBroker().start()
    bootstrap = bootstrap or embedded.bootstrap
    settings = KafkaSettings(bootstrap=bootstrap)
    name = f"bench{int(time.time() * 1000)}"
    try:
        ensure_topics(settings, {f"{name}-clicks": TopicSpec(partitions=partitions)})
        produce_started = time.monotonic()
        with ClickProducer(settings, f"{name}-clicks", partitions, envelope=envelope) as producer:
            producer.send_many(synthetic_events(events, n_items, seed))
        produce_s = time.monotonic() - produce_started
        with tempfile.TemporaryDirectory(prefix="trail-bench-") as data_dir:
            timed = time_worker(bootstrap, name, f"{name}-clicks", partitions, events, scorer, timeout_s,
                                Path(data_dir))
    finally:
        if embedded:
            embedded.stop()
    return {
        "bench": "ingest",
        "events": events,
        "envelope": envelope,
        "messages": -(-events // envelope),
        **timed,
        "partitions": partitions,
        "broker": "embedded tansu (memory)" if embedded else bootstrap,
        "produce_events_per_s": round(events / produce_s),
        "machine": machine_description(),
    }


def time_worker(bootstrap: str, app_id: str, clicks_topic: str, partitions: int, events: int, scorer: str,
                timeout_s: float, data_dir: Path, extra_args: tuple[str, ...] = ()) -> dict:
    """Run one worker (app id `app_id`, state under `data_dir`) over `clicks_topic` until its table holds
    `events` events, then stop it; seconds from its first input batch to its last table write, and rate."""
    import psutil

    from streams.worker_process import WorkerProcess

    args = bench_worker_args(bootstrap, app_id, partitions, scorer)
    args[args.index("--clicks-topic") + 1] = clicks_topic
    worker = WorkerProcess([*args, *extra_args], Path(data_dir)).start()
    try:
        status = worker.wait_for(lambda s: s.get("counted", 0) >= events, timeout_s, f"{events} counted")
        rss_mb = psutil.Process(worker.process.pid).memory_info().rss / 2**20
    finally:
        worker.stop()
    seconds = status["last_counted_at"] - status["first_input_at"]
    return {
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds),
        "counted": status["counted"],
        "steps_scored": status.get("steps_scored", 0),
        "scorer": status.get("scorer", scorer),
        "rss_mb": round(rss_mb, 1),
    }


def bench_worker_args(bootstrap: str, name: str, partitions: int, scorer: str = "velocity") -> list[str]:
    """`trail worker` flags of a bench's worker: app id `name`, its topics named after it, warnings only."""
    return ["--bootstrap", bootstrap, "--app-id", name, "--partitions", str(partitions),
            "--clicks-topic", f"{name}-clicks", "--items-topic", f"{name}-items", "--dlq-topic", f"{name}-dlq",
            "--trending-topic", f"{name}-trending", "--scorer", scorer, "--log-level", "warning"]


def machine_description() -> str:
    import os

    import psutil

    return f"{platform.machine()} {psutil.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}"


def run(args: argparse.Namespace) -> int:
    result = measure_ingest(args.events, args.envelope, args.partitions, args.items, args.seed,
                            args.bootstrap, args.scorer, args.timeout_s)
    print(orjson.dumps(result).decode())
    return 0
