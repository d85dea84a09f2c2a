"""`trail bench dedup`: what `event_id` de-duplication costs stage 2 (the partition owner's apply path).

The same synthetic deltas are applied to a fresh RocksDB partition twice: once aggregated without ids,
once with an id per event (each id looked up and stored, `streams.state`). Prints one JSON object:
events, the apply rate of each run, their ratio, and the store's size on disk after a flush. No Kafka.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import orjson


def add_bench_parser(benches) -> None:
    parser = benches.add_parser("dedup", help="cost of event_id de-duplication in stage 2 (JSON)",
                                description=__doc__.split("\n\n")[1])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--per-message", type=int, default=1000, help="entries per deltas message")
    parser.add_argument("--json", action="store_true", help="(the output is always one JSON object)")
    parser.set_defaults(func=run)


def apply_run(events: int, per_message: int, with_ids: bool, folder: str) -> dict:
    import rocksdict

    from models.windows import WindowSpec
    from streams.deltas import DeltaColumns
    from streams.state import PartitionState

    spec = WindowSpec(slot_s=86_400, bucket_s=7 * 86_400, n_buckets=4, allowed_lateness_s=0)
    db = rocksdict.Rdict(folder, options=rocksdict.Options(raw_mode=True))
    state = PartitionState(0, db, spec, n_sources=1)
    started = time.perf_counter()
    for first in range(0, events, per_message):
        rows = range(first, min(first + per_message, events))
        columns = DeltaColumns([first // per_message] * len(rows), [f"item-{i % 5000}" for i in rows],
                               [19_700 + i % 20 for i in rows], [1] * len(rows),
                               [f"event-{i:012d}" for i in rows] if with_ids else [])
        update = state.apply_deltas(0, 19_720 * 86_400_000, columns)
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in update.writes.items():
            batch.put(key, value)
        db.write(batch)
        state.accept(update)
    seconds = time.perf_counter() - started
    db.flush()
    db.close()
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
    return {"events_per_s": round(events / seconds), "disk_bytes": size}


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="trail-bench-dedup-") as tmp:
        plain = apply_run(args.events, args.per_message, False, os.path.join(tmp, "plain"))
        identified = apply_run(args.events, args.per_message, True, os.path.join(tmp, "ids"))
    print(orjson.dumps({
        "bench": "dedup", "events": args.events, "per_message": args.per_message,
        "without_ids_events_per_s": plain["events_per_s"], "with_ids_events_per_s": identified["events_per_s"],
        "rate_ratio": round(identified["events_per_s"] / plain["events_per_s"], 3),
        "disk_bytes_without_ids": plain["disk_bytes"], "disk_bytes_with_ids": identified["disk_bytes"],
        "disk_bytes_per_id": round((identified["disk_bytes"] - plain["disk_bytes"]) / args.events, 2),
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "load": os.getloadavg()[0],
    }).decode())
    return 0
