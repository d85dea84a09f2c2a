"""`trail bench route`: the worker's per-event CPU for envelopes, call by call, against `orjson.loads` alone.

Builds the same synthetic events as `trail bench ingest` in envelopes grouped by item partition (as
`streams.producer.ClickProducer` writes them), then times, best of `--repeat`, in microseconds per event: stage
1's calls (`orjson.loads` of every message, the decode a raw consumer does and nothing else; the compiled
scanner `plain_envelope`; the compiled counting `count_by_partition`; `decode_message`, the full check every
other message takes; `DeltaRouter.route` with a new router and a warm one) and stage 2's (`decode_deltas` of
the routed deltas; `PartitionState.apply_messages` on a fresh RocksDB partition, without its write). Prints
one JSON object with the ratios to `orjson.loads`. No Kafka, one process.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable

import orjson

LOOSE_MAX_TS_MS = 2**50   # the synthetic events lie in 2024: every time is accepted


def add_bench_parser(benches) -> None:
    parser = benches.add_parser("route", help="per-event CPU of stage 1 and 2 calls vs orjson.loads (JSON)",
                                description=__doc__.split("\n\n")[1])
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--envelope", type=int, default=100, help="events per message")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--items", type=int, default=100_000, help="distinct item ids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=7, help="timings per call (the best is kept)")
    parser.add_argument("--json", action="store_true", help="(the output is always one JSON object)")
    parser.set_defaults(func=run)


def grouped_envelopes(events: list[dict], envelope: int, partitions: int) -> list[tuple[int, int, bytes]]:
    """(source partition, offset, value) of envelopes holding only items of one partition, in event order."""
    from streams.partitioning import partition_for

    pending: dict[int, list[dict]] = {}
    messages: list[tuple[int, int, bytes]] = []
    for event in events:
        partition = partition_for(event["item_id"].encode(), partitions)
        group = pending.setdefault(partition, [])
        group.append(event)
        if len(group) == envelope:
            messages.append((partition, len(messages), orjson.dumps(group)))
            pending[partition] = []
    messages += [(p, len(messages) + k, orjson.dumps(g)) for k, (p, g) in enumerate(pending.items()) if g]
    return messages


def best_us_per_event(call: Callable[[], object], n_events: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return round(best / n_events * 1e6, 4)


def measure_route(args: argparse.Namespace) -> dict:
    import rocksdict

    from models.windows import WindowSpec
    from streams._fastpath import count_by_partition
    from streams.bench_ingest import synthetic_events
    from streams.deltas import DeltaRouter, decode_deltas, encode_deltas
    from streams.events import decode_message, plain_envelope
    from streams.state import PartitionState

    spec = WindowSpec()
    messages = grouped_envelopes(synthetic_events(args.events, args.items, args.seed), args.envelope,
                                 args.partitions)
    values = [value for _, _, value in messages]
    n, repeat = args.events, args.repeat
    scanned = [plain_envelope(value, LOOSE_MAX_TS_MS, 0) for value in values]
    warm = DeltaRouter(args.partitions, spec, dedup_capacity=100_000)
    routed = warm.route(messages, LOOSE_MAX_TS_MS, 0)
    deltas = [(target, value) for (source, target), columns in routed.deltas.items()
              for value in encode_deltas(source, routed.watermarks[source], columns)]
    decoded = [(target, decode_deltas(value, args.partitions, LOOSE_MAX_TS_MS)) for target, value in deltas]
    us = {
        "orjson_loads": best_us_per_event(lambda: [orjson.loads(v) for v in values], n, repeat),
        "scan_plain_envelope": best_us_per_event(lambda: [plain_envelope(v, LOOSE_MAX_TS_MS, 0) for v in values],
                                                 n, repeat),
        "count_by_partition": best_us_per_event(
            lambda: [count_by_partition(s.item_ids, s.ts_ms, spec.slot_ms, args.partitions) for s in scanned],
            n, repeat),
        "decode_message_full_check": best_us_per_event(
            lambda: [decode_message(v, LOOSE_MAX_TS_MS, 0) for v in values], n, repeat),
        "route_new_router": best_us_per_event(
            lambda: DeltaRouter(args.partitions, spec, 100_000).route(messages, LOOSE_MAX_TS_MS, 0), n, repeat),
        "route_warm_router": best_us_per_event(lambda: warm.route(messages, LOOSE_MAX_TS_MS, 0), n, repeat),
        "decode_deltas": best_us_per_event(
            lambda: [decode_deltas(v, args.partitions, LOOSE_MAX_TS_MS) for _, v in deltas], n, repeat),
    }
    with tempfile.TemporaryDirectory(prefix="trail-bench-route-") as tmp:
        states = [PartitionState(p, rocksdict.Rdict(os.path.join(tmp, str(p)), options=rocksdict.Options(
            raw_mode=True)), spec, args.partitions, 1000) for p in range(args.partitions)]
        by_target = [[parts for target, parts in decoded if target == p] for p in range(args.partitions)]
        us["apply_messages"] = best_us_per_event(
            lambda: [state.apply_messages(parts) for state, parts in zip(states, by_target, strict=True)], n, repeat)
        for state in states:
            state.db.close()
    return {
        "bench": "route", "events": n, "envelope": args.envelope, "messages": len(messages),
        "partitions": args.partitions, "deltas_messages": len(deltas),
        "deltas_entries": sum(len(columns.offsets) for columns in routed.deltas.values()),
        "us_per_event": us,
        "ratio_to_orjson_loads": {k: round(v / us["orjson_loads"], 2) for k, v in us.items() if k != "orjson_loads"},
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, load {os.getloadavg()[0]:.1f}",
        "command": (f"trail bench route --events {n} --envelope {args.envelope} --partitions {args.partitions} "
                    f"--items {args.items} --seed {args.seed} --repeat {repeat} --json"),
    }


def run(args: argparse.Namespace) -> int:
    if min(args.events, args.envelope, args.partitions, args.items, args.repeat) < 1:
        raise ValueError("--events, --envelope, --partitions, --items and --repeat must be at least 1")
    print(orjson.dumps(measure_route(args)).decode())
    return 0
