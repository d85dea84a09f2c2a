"""`trail bench recovery`: history length vs restart time vs changelog and disk, for one worker.

For each history size: pre-produce that many synthetic events (as `trail bench ingest`), run one worker
(fresh app id, its own data dir) until its table holds them all, stop it, and measure the counts table's
changelog (records, key + value bytes, all partitions) and the worker's RocksDB on disk. Then restart it
twice and time each from process start until `/readyz` answers 200 (it owns partitions and faust's table
recovery is over): warm (same data dir: the local RocksDB is current) and cold (its RocksDB deleted: a
full replay of the changelog). After each restart the counts table is read back: its rings, applied input
offsets and event ids must equal, key for key, what the first run wrote, and its rings must hold
exactly the history's events (`exact`; the command exits 1 otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from infra.kafka_config import KafkaSettings
from streams.bench_ingest import bench_worker_args, synthetic_events

DEFAULT_HISTORY = "20000,80000,160000"
READY_POLL_S = 0.05      # /readyz polled this often: the restart times' resolution

# what a deployment on tansu (which never compacts) grows without bound, and what the worker keeps bounded
GROWTH = {
    "unbounded": "the changelog topics on tansu, which never compacts: every deltas message rewrites the whole "
                 "ring of each item it touches plus the applied offset, watermark and a group end, so "
                 "`<app>-slot-counts-changelog` grows with every input message (not with distinct state), and "
                 "a cold restart replays all of it",
    "bounded": "the local RocksDB state: rings trimmed to the window's slots (n_buckets x bucket_s), "
               "`e:<event_id>` keys deleted once their slot leaves the window, merge `pending:<boundary>` keys "
               "deleted once the step is emitted; on Kafka the changelogs are created with "
               "cleanup.policy=compact (streams/topics.py), so they too keep about one record per live key",
}


def add_bench_parser(benches) -> None:
    parser = benches.add_parser("recovery", help="history length vs warm/cold restart time vs changelog and disk",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=history_sizes, default=history_sizes(DEFAULT_HISTORY), metavar="N,N,...",
                        help=f"events of history, one measured row each (default {DEFAULT_HISTORY})")
    parser.add_argument("--envelope", type=int, default=100, help="events per message (1: single events)")
    parser.add_argument("--chunk-events", type=int, default=0, metavar="N",
                        help="0 (default): the whole history is produced before the worker starts (a catch-up: "
                             "few large writes); N: it is produced in chunks of N events while the worker runs, "
                             "each chunk counted before the next is sent (a live stream: one write per chunk)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--items", type=int, default=100_000, help="distinct item ids")
    parser.add_argument("--bootstrap", default=None,
                        help="use this Kafka instead of starting an embedded broker (memory storage)")
    parser.add_argument("--timeout-s", type=float, default=600, help="limit of each wait (counting, each restart)")
    parser.add_argument("--json", action="store_true", help="print only the JSON object")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def history_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"history sizes must be integers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"history sizes must be positive, got {text!r}")
    return sizes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readyz(port: int) -> tuple[int, dict] | None:
    """(HTTP status, JSON body) of the worker's `/readyz`, or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:   # 503: alive, not ready
        return exc.code, orjson.loads(exc.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def timed_restart(worker, port: int, timeout_s: float) -> dict:
    """Start the worker again; seconds from process start until `/readyz` first answers (`up_s`), first shows
    owned partitions (`joined_s`: the group rebalance is done, table recovery starts) and answers 200
    (`ready_s`: owns partitions, table recovery over)."""
    started = time.monotonic()
    worker.start()
    deadline = started + timeout_s
    phases: dict[str, float] = {}
    while time.monotonic() < deadline:
        answer = readyz(port)
        now = round(time.monotonic() - started, 2)
        if answer is not None:
            phases.setdefault("up_s", now)
            code, body = answer
            if body.get("assigned"):
                phases.setdefault("joined_s", now)
            if code == 200:
                return {**phases, "ready_s": now}
        if not worker.alive():
            raise RuntimeError(f"worker exited (code {worker.process.returncode}) before it was ready:\n"
                               f"{worker.log_tail()}")
        time.sleep(READY_POLL_S)
    raise TimeoutError(f"worker not ready in {timeout_s}s; status {worker.status()}\n{worker.log_tail()}")


def changelog_size(settings: KafkaSettings, topic: str, timeout_s: float, quiet_s: float = 2.0) -> tuple[int, int]:
    """(records, key + value bytes) of every partition of `topic`, read from offset 0 to its end.

    Tansu lists end offsets one batch short (infra/tansu_shim.py), so reading stops once every partition
    reached its listed end and then a poll of `quiet_s` brought nothing (the rest of the last batch comes
    with the fetch that reaches into it).
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**settings.confluent(), "group.id": "trail-bench-recovery", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        listed_end = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        next_offset = dict.fromkeys(partitions, 0)
        records = size = 0
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            messages = [m for m in consumer.consume(10_000, timeout=0.5) if m.error() is None]
            for message in messages:
                records += 1
                size += len(message.key() or b"") + len(message.value() or b"")
                next_offset[message.partition()] = message.offset() + 1
            if messages:
                quiet_since = time.monotonic()
            elif (all(next_offset[p] >= listed_end[p] for p in partitions)
                  and time.monotonic() - quiet_since >= quiet_s):
                return records, size
        raise TimeoutError(f"{topic}: read {records} records, not at its end after {timeout_s}s "
                           f"(at {next_offset}, listed ends {listed_end})")
    finally:
        consumer.close()


def disk_bytes(path: Path) -> int:
    """Bytes of the files under `path` (what `du --apparent-size` counts)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def read_counts_table(state_dir: Path, table: str) -> dict[str, bytes]:
    """Every key of every partition of the counts table as stored in RocksDB ("<partition>/<key hex>" -> value),
    read from a stopped worker's data dir."""
    import rocksdict

    rows: dict[str, bytes] = {}
    for path in sorted((state_dir / "tables").glob(f"{table}-*.db")):
        partition = path.name.removeprefix(f"{table}-").removesuffix(".db")
        db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        try:
            for key, value in db.items():
                rows[f"{partition}/{key.hex()}"] = value
        finally:
            db.close()
    return rows


def count_state(rows: dict[str, bytes]) -> dict[str, bytes]:
    """The keys that make the counts exact: rings, applied input offsets, event ids and geometry.

    Left out, as progress a restarted worker may advance before it is stopped again: `m:next` (a step that
    was due when the first run stopped gets scored), `m:wm:<source>` (a table partition learns a source's
    newest event time from that source's next deltas or idle message; measured: partition 0's watermarks of
    sources 2 and 3 moved forward in one warm restart of 160,000 pre-produced events, rings and applied
    offsets equal) and faust's persisted changelog offset (moves with them).
    """
    from streams.state import NEXT_BOUNDARY_KEY, WATERMARK_PREFIX

    skip = (NEXT_BOUNDARY_KEY.hex(), WATERMARK_PREFIX.hex(), b"__faust".hex())
    return {key: value for key, value in rows.items() if not key.split("/", 1)[1].startswith(skip)}


def progress_moved(before: dict[str, bytes], after: dict[str, bytes]) -> int:
    """Keys outside the count state (watermarks, next boundary, changelog offset) whose value changed."""
    counted = count_state(before).keys() | count_state(after).keys()
    return sum(1 for k in before.keys() | after.keys() if k not in counted and before.get(k) != after.get(k))


def count_state_diff(before: dict[str, bytes], after: dict[str, bytes], limit: int = 5) -> list[dict]:
    """The first `limit` keys of the count state whose values differ (readable), for a result that is not exact."""
    before, after = count_state(before), count_state(after)
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    show = (lambda v: None if v is None else v[:60].decode(errors="replace"))   # noqa: E731
    return [{"partition": k.split("/", 1)[0], "key": show(bytes.fromhex(k.split("/", 1)[1])),
             "before": show(before.get(k)), "after": show(after.get(k))} for k in keys[:limit]]


def ring_events(rows: dict[str, bytes]) -> int:
    """Events held in the rings of a table read by `read_counts_table`."""
    from models.windows import decode_ring
    from streams.state import RING_PREFIX

    prefix = RING_PREFIX.hex()
    return sum(int(decode_ring(value)["count"].sum()) for key, value in rows.items()
               if key.split("/", 1)[1].startswith(prefix) and value)


def table_digest(rows: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for key in sorted(rows):
        digest.update(key.encode() + b"\0" + rows[key] + b"\0")
    return digest.hexdigest()[:16]


def measure_history(settings: KafkaSettings, events: int, envelope: int, partitions: int, n_items: int, seed: int,
                    timeout_s: float, chunk_events: int = 0) -> dict:
    """One row: count `events`, stop, measure changelog and disk, then a warm and a cold timed restart."""
    from infra.admin import TopicSpec, ensure_topics
    from streams.producer import ClickProducer
    from streams.worker_process import WorkerProcess

    name = f"recov{int(time.time() * 1000)}"
    table = "slot-counts"
    ensure_topics(settings, {f"{name}-clicks": TopicSpec(partitions=partitions)})
    history = synthetic_events(events, n_items, seed)
    chunk = chunk_events or events
    producer = ClickProducer(settings, f"{name}-clicks", partitions, envelope=envelope)
    producer.send_many(history[:chunk])
    producer.flush()
    with tempfile.TemporaryDirectory(prefix="trail-bench-recovery-") as tmp:
        data_dir = Path(tmp)
        port = free_port()
        worker = WorkerProcess([*bench_worker_args(settings.bootstrap, name, partitions), "--metrics-port", str(port)],
                               data_dir)
        state_dir = data_dir / worker.worker_id / "v1"
        try:
            worker.start()
            for sent in range(chunk, events + chunk, chunk):   # the rest of the history, a chunk at a time
                target = min(sent, events)
                status = worker.wait_for(lambda s, n=target: s.get("counted", 0) >= n, timeout_s, f"{target} counted")
                if sent < events:
                    producer.send_many(history[sent:sent + chunk])
                    producer.flush()
            worker.stop()
            written = read_counts_table(state_dir, table)
            records, size = changelog_size(settings, f"{name}-{table}-changelog", timeout_s)
            disk = disk_bytes(state_dir)

            warm = timed_restart(worker, port, timeout_s)
            worker.stop()
            warm_rows = read_counts_table(state_dir, table)

            shutil.rmtree(state_dir)
            cold = timed_restart(worker, port, timeout_s)
            worker.stop()
            cold_rows = read_counts_table(state_dir, table)
            cold_disk = disk_bytes(state_dir)
        finally:
            worker.stop()
    return {
        "history_events": events,
        "chunks": -(-events // chunk),
        "counted": status["counted"],
        "changelog_records": records,
        "changelog_mb": round(size / 1e6, 2),
        "disk_mb": round(disk / 1e6, 2),
        "cold_disk_mb": round(cold_disk / 1e6, 2),
        "table_keys": len(written),
        "warm_restart_s": warm["ready_s"],
        "cold_restart_s": cold["ready_s"],
        "cold_over_warm": round(cold["ready_s"] / warm["ready_s"], 2),
        "warm_phases": warm,
        "cold_phases": cold,
        "ring_events": {"first_run": ring_events(written), "warm": ring_events(warm_rows),
                        "cold": ring_events(cold_rows)},
        "warm_counts_equal": count_state(warm_rows) == count_state(written),
        "cold_counts_equal": count_state(cold_rows) == count_state(written),
        "counts_sha256_16": table_digest(count_state(written)),
        "warm_diff": count_state_diff(written, warm_rows),   # the first differing keys; [] when equal
        "cold_diff": count_state_diff(written, cold_rows),
        "progress_keys_moved": {"warm": progress_moved(written, warm_rows), "cold": progress_moved(written, cold_rows)},
    }


def machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "arch": platform.machine(), "cores": psutil.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def measure_recovery(history: list[int], envelope: int = 100, partitions: int = 4, n_items: int = 100_000,
                     seed: int = 0, bootstrap: str | None = None, timeout_s: float = 600,
                     command: str = "", chunk_events: int = 0) -> dict:
    """Every history size's row, on one broker (embedded tansu with memory storage unless `bootstrap`)."""
    from infra.broker import EmbeddedBroker

    before = machine()
    embedded = None if bootstrap else EmbeddedBroker().start()
    try:
        settings = KafkaSettings(bootstrap=bootstrap or embedded.bootstrap)
        rows = [measure_history(settings, n, envelope, partitions, n_items, seed, timeout_s, chunk_events)
                for n in history]
    finally:
        if embedded:
            embedded.stop()
    after = machine()
    exact = all(r["counted"] == r["history_events"] and r["warm_counts_equal"] and r["cold_counts_equal"]
                and set(r["ring_events"].values()) == {r["history_events"]} for r in rows)
    return {
        "bench": "recovery",
        "command": command,
        "rows": rows,
        "exact": exact,
        "envelope": envelope,
        "chunk_events": chunk_events,
        "partitions": partitions,
        "broker": "embedded tansu (memory)" if embedded else bootstrap,
        "ready": "seconds from process start until /readyz answers 200 (owns partitions, table recovery over); "
                 "phases: up_s (/readyz first answers), joined_s (first owns partitions), ready_s",
        "growth": GROWTH,
        "machine": {**before, "load_avg_after": after["load_avg"]},
    }


def run(args: argparse.Namespace) -> int:
    command = "trail bench recovery --history " + ",".join(map(str, args.history)) + (
        f" --envelope {args.envelope} --partitions {args.partitions}"
        + (f" --chunk-events {args.chunk_events}" if args.chunk_events else "") + (" --json" if args.json else ""))
    result = measure_recovery(args.history, args.envelope, args.partitions, args.items, args.seed, args.bootstrap,
                              args.timeout_s, command, args.chunk_events)
    print(orjson.dumps(result).decode())
    return 0 if result["exact"] else 1
