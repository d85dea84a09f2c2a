"""`trail bench peer`: TRAIL's ingest against a peer and a ceiling, measured in one run on one broker.

Absolute events/s do not travel between machines (two 2-core machines of one kind differ ~2x); ratios
measured side by side do. One invocation starts one embedded broker (or uses `--bootstrap`), writes the
same synthetic events (`streams.bench_ingest.synthetic_events`, time-ordered, Zipf-skewed items) twice:
as single-event messages keyed by item and as 100-event envelopes grouped by item partition, then times:

- `trail_single`, `trail_envelope`: one TRAIL worker process from its first input batch until its table
  holds every event (`streams.bench_ingest.time_worker`);
- `quix`: Quix Streams 3.28.1 (librdkafka client, RocksDB state, changelog on, at-least-once) counting the
  single-event topic per item in 1-day tumbling windows, `.final()` with the partition closing strategy
  (windows close with the partition's event time, as TRAIL's watermark closes slots), in a child process;
- `raw_single`, `raw_envelope`: a stateless librdkafka (confluent-kafka) consume + orjson decode loop, the
  ceiling for a Python consumer on this machine and broker.

Every event stream ends with one flush event per partition, two days after the last event, so every Quix
window closes. Counts are checked against a straight recount of the events per (item, day): TRAIL's from its
RocksDB rings after the worker stopped, Quix's from its final window results. Quix Streams is an optional
extra (`pip install -e '.[bench]'`, see the Makefile); without it the Quix run is reported as skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

from infra.kafka_config import KafkaSettings

DAY_MS = 86_400_000
FLUSH_AFTER_MS = 2 * DAY_MS
FLUSH_PREFIX = "flush-"


def add_bench_parser(benches) -> None:
    parser = benches.add_parser("peer", help="TRAIL ingest vs Quix Streams and a raw librdkafka ceiling (JSON)",
                                description=__doc__.split("\n\n")[1])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--envelope", type=int, default=100, help="events per message of the envelope runs")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--items", type=int, default=100_000, help="distinct item ids")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all five runs (ratios per round)")
    parser.add_argument("--bootstrap", default=None,
                        help="use this Kafka instead of starting an embedded broker (memory storage)")
    parser.add_argument("--timeout-s", type=float, default=600, help="per run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-quix", action="store_true", help="do not run the Quix Streams peer")
    parser.add_argument("--batch-drain", action=argparse.BooleanOptionalAction, default=None,
                        help="run TRAIL's workers with --batch-drain or --no-batch-drain (default: the worker's)")
    parser.add_argument("--batch-max-messages", type=int, default=None,
                        help="run TRAIL's workers with this --batch-max-messages (default: the worker's)")
    parser.add_argument("--json", action="store_true", help="(the output is always one JSON object)")
    parser.set_defaults(func=run)


# --- the events and their recount -----------------------------------------------------------------------

def bench_events(n: int, n_items: int, seed: int, partitions: int) -> list[dict]:
    """The synthetic events, then one flush event per partition (keyed to land on it) after the last."""
    from streams.bench_ingest import synthetic_events
    from streams.partitioning import partition_for

    events = synthetic_events(n, n_items, seed)
    flush_ts = max(e["ts"] for e in events) + FLUSH_AFTER_MS
    flush_items: dict[int, str] = {}
    k = 0
    while len(flush_items) < partitions:
        item = f"{FLUSH_PREFIX}{k}"
        flush_items.setdefault(partition_for(item.encode(), partitions), item)
        k += 1
    return events + [{"item_id": flush_items[p], "ts": flush_ts} for p in range(partitions)]


def recount(events: list[dict]) -> Counter:
    """(item, day) -> events: the straight count both pipelines must reproduce."""
    return Counter((e["item_id"], e["ts"] // DAY_MS) for e in events)


def count_mismatches(truth: Counter, counted: Counter) -> int:
    """(item, day) keys whose counts differ, the flush events' own windows aside (Quix never closes them)."""
    keys = {key for key in truth.keys() | counted.keys() if not key[0].startswith(FLUSH_PREFIX)}
    return sum(1 for key in keys if truth.get(key, 0) != counted.get(key, 0))


def trail_counts(data_dir: Path, table: str = "slot-counts") -> Counter:
    """(item, day) -> count read from a stopped worker's RocksDB rings (every partition's database)."""
    import rocksdict

    from models.windows import decode_ring
    from streams.state import RING_PREFIX

    counts: Counter = Counter()
    databases = sorted(data_dir.rglob(f"{table}-*.db"))
    if not databases:
        raise FileNotFoundError(f"no {table}-*.db under {data_dir}")
    for path in databases:
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        try:
            for key, value in db.items(from_key=RING_PREFIX):
                if not key.startswith(RING_PREFIX):
                    break
                item = key[len(RING_PREFIX):].decode()
                for slot, count in decode_ring(value).tolist():
                    counts[(item, slot)] += count
        finally:
            db.close()
    return counts


# --- the ceiling: consume + decode, no state ----------------------------------------------------------------

def raw_consume(bootstrap: str, topic: str, n_events: int, timeout_s: float) -> dict:
    """Events/s of a stateless confluent-kafka consume + orjson decode loop over a whole topic."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{topic}-{time.time_ns()}",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    # assigned, not subscribed: no group join to wait for (tansu holds JoinGroup for session_timeout / 2)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    loads = orjson.loads
    seen = 0
    first = last = 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < n_events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consumer read {seen} of {n_events} events from {topic} in {timeout_s}s")
            batch = consumer.consume(10_000, 0.5)
            if not batch:
                continue
            if not first:
                first = time.perf_counter()
            for message in batch:
                if message.error():
                    continue
                payload = loads(message.value())
                seen += len(payload) if type(payload) is list else 1
            last = time.perf_counter()
    finally:
        consumer.close()
    return {"events": seen, "seconds": round(last - first, 3), "events_per_s": round(seen / (last - first))}


# --- the peer: Quix Streams in a child process -------------------------------------------------------------

def quix_available() -> str | None:
    """None if Quix Streams imports, else why not."""
    try:
        import quixstreams  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip the peer, say why
        return f"quixstreams not importable ({exc}); install the bench extra: pip install -e '.[bench]' " \
               "and quixstreams==3.28.1 --no-deps (see the Makefile)"
    return None


def run_quix(bootstrap: str, topic: str, n_messages: int, timeout_s: float, work_dir: Path) -> dict:
    """Run `quix_child` in a fresh interpreter (as TRAIL's worker runs in its own process); its result."""
    spec = {"bootstrap": bootstrap, "topic": topic, "messages": n_messages, "work_dir": str(work_dir)}
    result_path = work_dir / "quix-result.json"
    log_path = work_dir / "quix.log"
    with log_path.open("wb") as log:
        proc = subprocess.run([sys.executable, "-c", "import sys; from streams.bench_peer import quix_child; "
                               "quix_child(sys.argv[1])", orjson.dumps(spec).decode()],
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                              cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"quix run failed (exit {proc.returncode}):\n{log_path.read_text()[-3000:]}")
    return orjson.loads(result_path.read_bytes())


def quix_child(spec_json: str) -> None:
    """The Quix Streams pipeline: per-item counts in 1-day tumbling windows over event time, RocksDB state
    with its changelog, final results kept in memory for the recount check; stops after `messages`."""
    from quixstreams import Application
    from quixstreams.models.topics import TopicAdmin, TopicManager

    spec = orjson.loads(spec_json)
    work_dir = Path(spec["work_dir"])

    class RetentionDefaultTopicManager(TopicManager):
        """tansu's DescribeConfigs returns no `retention.ms`, which Quix needs to derive its changelog
        topics' config (`TopicManager.derive_topic_config`): default it to -1 (keep forever) as Kafka would."""

        def _configure_topic(self, topic, broker_topic):
            topic = super()._configure_topic(topic, broker_topic)
            topic.broker_config.extra_config.setdefault("retention.ms", "-1")
            return topic

    group = f"quix-{spec['topic']}-{time.time_ns()}"
    counts: dict[str, int] = {}
    progress = {"messages": 0, "first": 0.0, "last": 0.0}

    def keep(value: dict, key: str, timestamp: int, headers) -> None:
        counts[f"{key}\t{value['start'] // DAY_MS}"] = value["value"]

    def processed(topic_name: str, partition: int, offset: int) -> None:
        now = time.perf_counter()
        if not progress["first"]:
            progress["first"] = now
        progress["last"] = now
        progress["messages"] += 1
        if progress["messages"] >= spec["messages"]:
            app.stop()

    app = Application(
        broker_address=spec["bootstrap"], consumer_group=group, auto_offset_reset="earliest",
        state_dir=str(work_dir / "quix-state"), loglevel="WARNING", use_changelog_topics=True,
        on_message_processed=processed,
        consumer_extra_config={"session.timeout.ms": 6000},   # tansu holds JoinGroup for session_timeout / 2
        topic_manager=RetentionDefaultTopicManager(topic_admin=TopicAdmin(broker_address=spec["bootstrap"]),
                                                   consumer_group=group))
    topic = app.topic(spec["topic"], key_deserializer="str", value_deserializer="json",
                      timestamp_extractor=lambda value, headers, timestamp, timestamp_type: value["ts"])
    sdf = app.dataframe(topic)
    sdf = sdf.tumbling_window(duration_ms=DAY_MS).count().final(closing_strategy="partition")
    sdf.update(keep, metadata=True)
    app.run()
    seconds = progress["last"] - progress["first"]
    (work_dir / "quix-result.json").write_bytes(orjson.dumps({
        "messages": progress["messages"], "seconds": round(seconds, 3),
        "events_per_s": round(progress["messages"] / seconds) if seconds else 0, "counts": counts}))


# --- one round, and the whole bench ---------------------------------------------------------------------------

def machine() -> dict:
    import psutil

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "logical_cpus": psutil.cpu_count(), "physical_cores": psutil.cpu_count(False),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def one_round(bootstrap: str, name: str, topics: dict[str, str], events: list[dict], truth: Counter,
              args: argparse.Namespace, skip_quix: str | None) -> dict:
    from streams.bench_ingest import time_worker

    n = len(events)
    result: dict = {"load_avg_1_at_start": round(os.getloadavg()[0], 2)}
    for run_name, kind in (("raw_single", "single"), ("raw_envelope", "envelope")):
        started = time.monotonic()
        result[run_name] = raw_consume(bootstrap, topics[kind], n, args.timeout_s)
        result[run_name]["wall_s"] = round(time.monotonic() - started, 1)
    with tempfile.TemporaryDirectory(prefix="trail-bench-peer-") as tmp:
        tmp_path = Path(tmp)
        if skip_quix:
            result["quix"] = {"skipped": skip_quix}
        else:
            (tmp_path / "quix").mkdir()
            started = time.monotonic()
            quix = run_quix(bootstrap, topics["single"], n, args.timeout_s, tmp_path / "quix")
            counted = Counter({(k.split("\t")[0], int(k.split("\t")[1])): v for k, v in quix.pop("counts").items()})
            quix["counted"] = sum(counted.values())
            quix["mismatched_keys"] = count_mismatches(truth, counted)
            quix["counts_exact"] = quix["mismatched_keys"] == 0
            quix["wall_s"] = round(time.monotonic() - started, 1)   # with start-up, recovery and shutdown
            result["quix"] = quix
        for run_name, topic in (("trail_single", topics["single"]), ("trail_envelope", topics["envelope"])):
            data_dir = tmp_path / run_name
            started = time.monotonic()
            status = time_worker(bootstrap, f"{name}-{run_name}-{time.time_ns()}", topic, args.partitions, n,
                                 "velocity", args.timeout_s, data_dir, worker_args(args))
            counted = trail_counts(data_dir)
            result[run_name] = {
                "seconds": status["seconds"], "events_per_s": status["events_per_s"], "counted": status["counted"],
                "rss_mb": status["rss_mb"], "mismatched_keys": count_mismatches(truth, counted),
                "wall_s": round(time.monotonic() - started, 1),
            }
            result[run_name]["counts_exact"] = result[run_name]["mismatched_keys"] == 0
    rate = {key: result[key].get("events_per_s") for key in ("raw_single", "raw_envelope", "quix",
                                                              "trail_single", "trail_envelope")}
    result["ratios"] = {
        "trail_single/quix": _ratio(rate["trail_single"], rate["quix"]),
        "trail_envelope/raw_envelope": _ratio(rate["trail_envelope"], rate["raw_envelope"]),
        "quix/raw_single": _ratio(rate["quix"], rate["raw_single"]),
        "trail_single/raw_single": _ratio(rate["trail_single"], rate["raw_single"]),
        "trail_envelope/quix": _ratio(rate["trail_envelope"], rate["quix"]),
    }
    return result


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


def measure_peer(args: argparse.Namespace) -> dict:
    from infra.admin import TopicSpec, ensure_topics
    from infra.broker import EmbeddedBroker
    from streams.producer import ClickProducer

    skip_quix = "--skip-quix" if args.skip_quix else quix_available()
    events = bench_events(args.events, args.items, args.seed, args.partitions)
    truth = recount(events)
    started_machine = machine()
    embedded = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap = args.bootstrap or embedded.bootstrap
    settings = KafkaSettings(bootstrap=bootstrap)
    name = f"peer{int(time.time() * 1000)}"
    topics = {"single": f"{name}-single", "envelope": f"{name}-envelope"}
    try:
        ensure_topics(settings, {topic: TopicSpec(partitions=args.partitions) for topic in topics.values()})
        for kind, envelope in (("single", 1), ("envelope", args.envelope)):
            with ClickProducer(settings, topics[kind], args.partitions, envelope=envelope) as producer:
                producer.send_many(events)
        rounds = [one_round(bootstrap, name, topics, events, truth, args, skip_quix) for _ in range(args.repeat)]
    finally:
        if embedded:
            embedded.stop()
    ratios = {key: [r["ratios"][key] for r in rounds] for key in rounds[0]["ratios"]}
    return {
        "bench": "peer",
        "events": len(events),
        "flush_events": args.partitions,
        "envelope": args.envelope,
        "partitions": args.partitions,
        "items": args.items,
        "broker": "embedded tansu (memory)" if embedded else bootstrap,
        "rounds": rounds,
        "ratios_median": {key: round(statistics.median(v), 4) if None not in v else None for key, v in ratios.items()},
        "ratios_min": {key: min(v) if None not in v else None for key, v in ratios.items()},
        "ratios_max": {key: max(v) if None not in v else None for key, v in ratios.items()},
        "counts_exact": all(r[k].get("counts_exact", True) for r in rounds
                            for k in ("quix", "trail_single", "trail_envelope")),
        "quix_skipped": skip_quix,
        "trail_worker_args": list(worker_args(args)),
        "machine": started_machine,
        "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "command": command_line(args),
    }


def worker_args(args: argparse.Namespace) -> tuple[str, ...]:
    extra: tuple[str, ...] = () if args.batch_drain is None else \
        (("--batch-drain",) if args.batch_drain else ("--no-batch-drain",))
    if args.batch_max_messages:
        extra += ("--batch-max-messages", str(args.batch_max_messages))
    return extra


def command_line(args: argparse.Namespace) -> str:
    parts = ["trail", "bench", "peer", "--events", str(args.events), "--envelope", str(args.envelope),
             "--partitions", str(args.partitions), "--items", str(args.items), "--repeat", str(args.repeat),
             "--seed", str(args.seed)]
    if args.bootstrap:
        parts += ["--bootstrap", args.bootstrap]
    if args.skip_quix:
        parts.append("--skip-quix")
    parts += worker_args(args)
    return " ".join(parts + ["--json"])


def run(args: argparse.Namespace) -> int:
    result = measure_peer(args)
    print(orjson.dumps(result).decode())
    return 0 if result["counts_exact"] else 1
