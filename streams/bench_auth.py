"""`trail bench auth`: what the HMAC tags of internal messages cost against decoding the same messages.

Times, per message, signing (`InternalKeys.headers`), verifying (`InternalKeys.check`) and decoding
(`decode_deltas`, `CandidatesMessage.decode`) for deltas messages of several entry counts, an idle message
and a top-k candidates message, as a worker writes them. Prints one JSON object: per kind, the message
size and the three costs in microseconds, and verify+sign as a share of decode. No Kafka.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import timeit

import orjson


def add_bench_parser(benches) -> None:
    parser = benches.add_parser("auth", help="cost of signing and verifying internal messages (JSON)",
                                description=__doc__.split("\n\n")[1])
    parser.add_argument("--entries", type=int, nargs="+", default=[1, 100, 1000],
                        help="entries per deltas message (one measurement each)")
    parser.add_argument("--top-k", type=int, default=10, help="candidates per candidates message")
    parser.add_argument("--repeat", type=int, default=5, help="best of this many timing runs")
    parser.add_argument("--json", action="store_true", help="(the output is always one JSON object)")
    parser.set_defaults(func=run)


def per_call_us(call, repeat: int) -> float:
    """Best-of-`repeat` microseconds per call, each run ~0.2 s."""
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return round(min(timer.repeat(repeat, number)) / number * 1e6, 2)


def measure(keys, topic: str, value: bytes, decode, repeat: int) -> dict:
    headers = keys.headers(topic, 1, None, value)
    assert keys.check(topic, 1, None, value, headers) is None
    sign_us = per_call_us(lambda: keys.headers(topic, 1, None, value), repeat)
    verify_us = per_call_us(lambda: keys.check(topic, 1, None, value, headers), repeat)
    decode_us = per_call_us(lambda: decode(value), repeat)
    return {"bytes": len(value), "sign_us": sign_us, "verify_us": verify_us, "decode_us": decode_us,
            "sign_verify_vs_decode": round((sign_us + verify_us) / decode_us, 3)}


def run(args: argparse.Namespace) -> int:
    from infra.internal_auth import InternalKeys
    from streams.deltas import DeltaColumns, decode_deltas, encode_deltas, encode_idle
    from streams.merge import CandidatesMessage

    keys = InternalKeys(secrets.token_bytes(32))
    now_ms, slot = 1_700_000_000_000, 19_675
    decode = lambda value: decode_deltas(value, 4, now_ms)  # noqa: E731
    results: dict[str, dict] = {}
    for entries in args.entries:
        columns = DeltaColumns([1000 + i // 50 for i in range(entries)], [f"item-{i}" for i in range(entries)],
                               [slot] * entries, [1 + i % 7 for i in range(entries)])
        [value] = encode_deltas(1, now_ms, columns)[:1]
        results[f"deltas_{entries}"] = measure(keys, "trail-deltas", value, decode, args.repeat)
    results["deltas_idle"] = measure(keys, "trail-deltas", encode_idle(1, now_ms), decode, args.repeat)
    candidates = [{"item_id": f"item-{i}", "counts": [3, 4, 6, 9], "last_event_slot": slot - 1,
                   "forecast": 12.5 - i, "text": f"Title {i} (1995) | Drama", "model": "velocity-baseline"}
                  for i in range(args.top_k)]
    message = CandidatesMessage(slot, 0, candidates).encode()
    results[f"candidates_{args.top_k}"] = measure(
        keys, "trail-candidates", message, lambda value: CandidatesMessage.decode(value, 4, args.top_k, 4),
        args.repeat)
    print(orjson.dumps({
        "bench": "auth", "algorithm": "HMAC-SHA256", "messages": results,
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "load": os.getloadavg()[0],
    }).decode())
    return 0
