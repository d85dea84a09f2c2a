"""`trail tail`: read trend records from the trending topic, pretty (a table per step) or as JSON lines."""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import orjson

from infra.admin import require_broker
from infra.errors import CommandError
from infra.kafka_config import add_kafka_args, settings_from_args
from streams.config import Topics


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("tail", help="show trending items as they are emitted",
                                   description="Read trend v1 records from the trending topic (no consumer "
                                   "group: reads all partitions directly).")
    add_kafka_args(parser)
    parser.add_argument("--topic", default=Topics.trending, help="the trending topic (default %(default)s)")
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    parser.add_argument("--json", action="store_true", help="one JSON record per line on stdout")
    parser.add_argument("--max-records", type=int, default=0, help="stop after this many (0: never)")
    parser.add_argument("--idle-exit-s", type=float, default=0.0, help="stop after this long without records")
    parser.add_argument("--dedupe", action="store_true",
                        help="show each record once: a step re-emitted after a worker crash carries the same "
                        "record_id (the newest 1,000,000 ids are remembered)")
    parser.set_defaults(func=run)


def read_records(settings, topic: str, from_beginning: bool, max_records: int = 0, idle_exit_s: float = 0.0):
    """Yield decoded records from every partition of `topic` (assign, not subscribe: no group rebalance)."""
    import time

    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    require_broker(settings)
    consumer = Consumer({**settings.confluent(), "group.id": "trail-tail", "enable.auto.commit": False,
                         "log_level": 2})   # a broker that goes away later: one line per cause, not a flood
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise CommandError(f"topic {topic!r} not found on {settings.bootstrap}; is a worker running?")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in metadata.topics[topic].partitions])
        seen, last_at = 0, time.monotonic()
        while not max_records or seen < max_records:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                if idle_exit_s and time.monotonic() - last_at > idle_exit_s:
                    return
                continue
            last_at = time.monotonic()
            seen += 1
            yield orjson.loads(message.value())
    finally:
        consumer.close()


def first_sightings(records: Iterable[dict], capacity: int = 1_000_000) -> Iterator[dict]:
    """Records whose `record_id` was not seen among the last `capacity` ids (records without one pass)."""
    seen: OrderedDict[str, None] = OrderedDict()
    for record in records:
        record_id = record.get("record_id")
        if record_id is not None:
            if record_id in seen:
                continue
            seen[record_id] = None
            if len(seen) > capacity:
                seen.popitem(last=False)
        yield record


def run(args: argparse.Namespace) -> int:
    records = read_records(settings_from_args(args), args.topic, args.from_beginning, args.max_records,
                           args.idle_exit_s)
    if args.dedupe:
        records = first_sightings(records)
    if args.json:
        for record in records:
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
            sys.stdout.flush()
        return 0
    from rich.console import Console
    console = Console()
    for record in records:
        window_end = record["window"]["end"] // 1000
        title = record.get("title") or record["item_id"]
        console.print(f"[bold]#{record['rank']:>2}[/] [cyan]{title[:48]:<48}[/] "
                      f"forecast {record['predicted_count']:>8.1f}  counts {record['recent_counts'][-4:]}  "
                      f"[dim]step {window_end} {record['model']['name']}[/]")
        console.print(f"     {record['explanation']}", style="italic")
    return 0
