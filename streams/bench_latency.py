"""`trail bench latency`: how long after a window's end its first trend record is on `trending-items`, live.

One invocation starts an embedded broker (or uses `--bootstrap`) and `--workers` worker processes with short
slots (default 10 s slots, 60 s buckets, 6 buckets, no allowed lateness), then a producer thread sends click
events stamped with the wall clock at a steady `--rate` (paced every millisecond, not in bursts; single-event
messages keyed by item over `--items` items) for `--duration-s`, while a consumer thread reads the trending
topic. For every step: the first record's arrival (wall clock, this process) minus the step's window end
(`window.end`, epoch ms: the wall-clock moment the boundary passed, as events carry the wall clock). Reported:
p50/p99/max over the steps (the first step, whose window holds the start, is left out), the achieved
producer rate, the load average and machine, and where the time went: each worker's step trace
(`streams.step_trace`, from its status file) as seconds after the window end of every hop.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson

from infra.kafka_config import KafkaSettings
from streams.step_trace import STAGES

WARMUP_STEPS = 1   # the first step's window holds the start (worker warm-up, partial data): left out


def add_bench_parser(benches) -> None:
    parser = benches.add_parser("latency", help="window end -> first trend record on the topic, live (JSON)",
                                description=__doc__.split("\n\n")[1])
    parser.add_argument("--rate", type=float, default=2000, help="events/s the producer keeps (default %(default)s)")
    parser.add_argument("--items", type=int, default=500, help="distinct item ids (default %(default)s)")
    parser.add_argument("--duration-s", type=float, default=120, help="seconds of producing (default %(default)s)")
    parser.add_argument("--slot-s", type=int, default=10)
    parser.add_argument("--bucket-s", type=int, default=60)
    parser.add_argument("--n-buckets", type=int, default=6)
    parser.add_argument("--allowed-lateness-s", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bundle", default=None,
                        help="score with this TRAIL bundle NAME|DIR (default: the velocity baseline)")
    parser.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                        help="extra `trail worker` flag (repeatable; e.g. --worker-arg=--batch-drain)")
    parser.add_argument("--bootstrap", default=None,
                        help="use this Kafka instead of starting an embedded broker (memory storage)")
    parser.add_argument("--producer-linger-ms", type=float, default=50,
                        help="the bench producer's linger.ms (default %(default)s; its wait is inside the measured "
                             "latency, as events are stamped when made). The embedded broker lists every batch stored "
                             "in a partition on each fetch, so a producer of small batches (5 ms: ~200 per partition "
                             "and second) slows it as the run goes on: see docs/benchmarks.md")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="(the output is always one JSON object)")
    parser.set_defaults(func=run)


# --- the producer -----------------------------------------------------------------------------------------

class PacedProducer(threading.Thread):
    """Sends events stamped with the wall clock at `rate` per second until `stop` is set (keeps no backlog:
    every millisecond it sends what the clock says is due)."""

    def __init__(self, settings: KafkaSettings, topic: str, partitions: int, rate: float, n_items: int,
                 seed: int, linger_ms: float = 50) -> None:
        super().__init__(name="latency-producer", daemon=True)
        self.linger_ms = linger_ms
        self.settings, self.topic, self.partitions = settings, topic, partitions
        self.rate, self.n_items, self.seed = rate, n_items, seed
        self.stop = threading.Event()
        self.sent = 0
        self.seconds = 0.0
        self.last_ts_ms = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # noqa: BLE001 - reported by the bench, not lost in a thread
            self.error = exc

    def _produce(self) -> None:
        from streams.producer import ClickProducer

        rng = np.random.default_rng(self.seed)
        items = (rng.zipf(1.2, size=1 << 16) - 1) % self.n_items   # skewed popularity, cycled
        # the linger bounds the batches per partition and second: tansu's fetch lists every batch a partition
        # holds, so at 5 ms (~200 batches/s per partition) its fetches slowed the whole run down as it went on
        settings = KafkaSettings(self.settings.bootstrap, {**self.settings.extra, "linger.ms": f"{self.linger_ms:g}"})
        with ClickProducer(settings, self.topic, self.partitions, envelope=1) as producer:
            started = time.monotonic()
            while not self.stop.is_set():
                due = int((time.monotonic() - started) * self.rate)
                now_ms = int(time.time() * 1000)
                while self.sent < due:
                    producer.send({"item_id": f"item{items[self.sent % len(items)]}", "ts": now_ms})
                    self.sent += 1
                self.last_ts_ms = now_ms
                time.sleep(0.001)
            self.seconds = time.monotonic() - started


# --- the trending-topic reader ----------------------------------------------------------------------------

class StepWatcher(threading.Thread):
    """Reads the trending topic from its start; per window end: first arrival (wall clock), records, and the
    worker's `generated_at` of the first record."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        super().__init__(name="latency-watcher", daemon=True)
        self.settings, self.topic = settings, topic
        self.stop = threading.Event()
        self.steps: dict[int, dict] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:  # noqa: BLE001 - reported by the bench
            self.error = exc

    def _watch(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        # tansu answers a fetch only when its wait is over: a short wait keeps the reader's own delay small
        # (at most 20 ms; `generated_s`, the worker's emission time, has none)
        consumer = Consumer({**self.settings.confluent(), "group.id": f"{self.topic}-latency",
                             "enable.auto.commit": False, "fetch.wait.max.ms": 20, "log_level": 2})
        try:
            consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
            while not self.stop.is_set():
                message = consumer.poll(0.05)
                if message is None or message.error() is not None:
                    continue
                arrived = time.time()
                record = orjson.loads(message.value())
                end = int(record["window"]["end"])
                step = self.steps.setdefault(end, {"arrived": arrived, "generated_at": record["generated_at"] / 1000,
                                                   "records": 0, "scorer": record["model"]["name"]})
                step["records"] += 1
        finally:
            consumer.close()


# --- the run ----------------------------------------------------------------------------------------------

def worker_args(args: argparse.Namespace, bootstrap: str, name: str) -> list[str]:
    from streams.bench_ingest import bench_worker_args

    return [*bench_worker_args(bootstrap, name, args.partitions, args.bundle or "velocity"),
            "--slot-s", str(args.slot_s), "--bucket-s", str(args.bucket_s), "--n-buckets", str(args.n_buckets),
            "--allowed-lateness-s", str(args.allowed_lateness_s), *args.worker_arg]


def start_workers(args: argparse.Namespace, bootstrap: str, name: str, data_dir: Path) -> list:
    """`--workers` worker processes of one app; returns once together they own every clicks partition."""
    from streams.worker_process import WorkerProcess

    workers = [WorkerProcess(worker_args(args, bootstrap, name), data_dir, f"w{k + 1}").start()
               for k in range(args.workers)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        owned = sorted(p for w in workers for p in w.status().get("assigned", []))
        if owned == list(range(args.partitions)) and all(w.status().get("recovering") is False for w in workers):
            return workers
        dead = [w for w in workers if not w.alive()]
        if dead:
            raise RuntimeError(f"worker {dead[0].worker_id} exited while starting:\n{dead[0].log_tail()}")
        time.sleep(0.2)
    raise TimeoutError("the workers never owned every partition in 120 s:\n" + workers[0].log_tail())


def wait_for_last_step(watcher: StepWatcher, last_end_ms: int, timeout_s: float) -> None:
    """Poll until the step whose window ends at `last_end_ms` arrived (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and last_end_ms not in watcher.steps and watcher.is_alive():
        time.sleep(0.1)


def final_traces(workers: list, after: float, timeout_s: float = 5.0) -> list[dict]:
    """Each worker's step trace from a status file written after `after` (the file is rewritten every second)."""
    deadline = time.monotonic() + timeout_s
    statuses = [w.status() for w in workers]
    while time.monotonic() < deadline and any(s.get("written_at", 0) <= after for s in statuses):
        time.sleep(0.2)
        statuses = [w.status() for w in workers]
    return [s.get("step_trace", {}) for s in statuses]


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    array = np.asarray(values, dtype=np.float64)
    return {"n": len(values), "p50": round(float(np.percentile(array, 50)), 3),
            "p99": round(float(np.percentile(array, 99)), 3), "max": round(float(array.max()), 3),
            "mean": round(float(array.mean()), 3)}


def step_hops(traces: list[dict], end_ms: int, slot_ms: int) -> dict[str, float]:
    """Seconds after the window end at which the step passed each hop (the latest mark over the workers)."""
    boundary = str(end_ms // slot_ms)
    hops = {}
    for stage in STAGES:
        marks = [trace[boundary][stage] for trace in traces if stage in trace.get(boundary, {})]
        if marks:
            hops[stage] = round(max(marks) - end_ms / 1000, 3)
    return hops


def hop_profile(per_step: list[dict]) -> dict:
    """p50/p99/max over the steps of each hop's seconds after the window end."""
    return {stage: percentiles([s["hops"][stage] for s in per_step if stage in s["hops"]]) for stage in STAGES}


def measure_latency(args: argparse.Namespace) -> dict:
    from infra.admin import TopicSpec, ensure_topics
    from infra.broker import EmbeddedBroker
    from streams.bench_peer import machine

    started_machine = machine()
    embedded = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap = args.bootstrap or embedded.bootstrap
    settings = KafkaSettings(bootstrap=bootstrap)
    name = f"latency{int(time.time() * 1000)}"
    slot_ms = args.slot_s * 1000
    try:
        ensure_topics(settings, {f"{name}-clicks": TopicSpec(partitions=args.partitions)})
        with tempfile.TemporaryDirectory(prefix="trail-bench-latency-") as data_dir:
            workers = start_workers(args, bootstrap, name, Path(data_dir))
            try:
                watcher = StepWatcher(settings, f"{name}-trending")
                producer = PacedProducer(settings, f"{name}-clicks", args.partitions, args.rate, args.items, args.seed,
                                         args.producer_linger_ms)
                watcher.start()
                producer.start()
                producer.join(args.duration_s)
                producer.stop.set()
                producer.join(60)
                if producer.error:
                    raise RuntimeError(f"the producer failed: {producer.error!r}")
                # the last boundary the data crossed: every source saw an event at or after it
                last_end_ms = (producer.last_ts_ms - args.allowed_lateness_s * 1000) // slot_ms * slot_ms
                wait_for_last_step(watcher, last_end_ms, timeout_s=args.slot_s + 30)
                watcher.stop.set()
                watcher.join(10)
                traces = final_traces(workers, after=time.time())
                dead = [w.worker_id for w in workers if not w.alive()]
            finally:
                for worker in workers:
                    worker.stop()
    finally:
        if embedded:
            embedded.stop()
    return report(args, watcher, producer, traces, dead, started_machine,
                  "embedded tansu (memory)" if embedded else bootstrap)


def report(args: argparse.Namespace, watcher: StepWatcher, producer: PacedProducer, traces: list[dict],
           dead: list[str], started_machine: dict, broker: str) -> dict:
    ends = sorted(watcher.steps)[WARMUP_STEPS:]
    per_step = [{"window_end": end, "latency_s": round(watcher.steps[end]["arrived"] - end / 1000, 3),
                 "generated_s": round(watcher.steps[end]["generated_at"] - end / 1000, 3),
                 "records": watcher.steps[end]["records"], "hops": step_hops(traces, end, args.slot_s * 1000)}
                for end in ends]
    scorers = sorted({watcher.steps[end]["scorer"] for end in ends})
    return {
        "bench": "latency",
        "scorer": scorers[0] if len(scorers) == 1 else scorers,
        "scorer_requested": args.bundle or "velocity",
        "rate": args.rate,
        "achieved_rate": round(producer.sent / producer.seconds, 1) if producer.seconds else 0.0,
        "events_sent": producer.sent,
        "items": args.items,
        "producer_linger_ms": args.producer_linger_ms,
        "duration_s": args.duration_s,
        "window": {"slot_s": args.slot_s, "bucket_s": args.bucket_s, "n_buckets": args.n_buckets,
                   "allowed_lateness_s": args.allowed_lateness_s},
        "workers": args.workers,
        "partitions": args.partitions,
        "steps": len(ends),
        "warmup_steps_left_out": min(WARMUP_STEPS, len(watcher.steps)),
        "latency_s": percentiles([s["latency_s"] for s in per_step]),
        "generated_s": percentiles([s["generated_s"] for s in per_step]),
        "hops_s": hop_profile(per_step),
        "per_step": per_step,
        "workers_died": dead,
        "broker": broker,
        "machine": started_machine,
        "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "command": command_line(args),
    }


def command_line(args: argparse.Namespace) -> str:
    parts = ["trail", "bench", "latency", "--rate", f"{args.rate:g}", "--items", str(args.items),
             "--duration-s", f"{args.duration_s:g}", "--slot-s", str(args.slot_s), "--bucket-s", str(args.bucket_s),
             "--n-buckets", str(args.n_buckets), "--allowed-lateness-s", str(args.allowed_lateness_s),
             "--workers", str(args.workers), "--partitions", str(args.partitions),
             "--producer-linger-ms", f"{args.producer_linger_ms:g}", "--seed", str(args.seed)]
    if args.bundle:
        parts += ["--bundle", args.bundle]
    if args.bootstrap:
        parts += ["--bootstrap", args.bootstrap]
    parts += [f"--worker-arg={arg}" for arg in args.worker_arg]
    return " ".join(parts + ["--json"])


def run(args: argparse.Namespace) -> int:
    result = measure_latency(args)
    print(orjson.dumps(result).decode())
    return 0 if result["steps"] and not result["workers_died"] else 1
