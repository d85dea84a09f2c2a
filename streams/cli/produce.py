"""`trail produce`: replay a JSONL/Parquet event file or a packaged dataset into `clicks`, in event-time
order, as fast as possible or time-compressed with `--speed` (event time is kept; only pacing changes)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

from streams.cli.common import add_kafka_args, settings_from_args
from streams.config import Topics, WorkerConfig


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "produce", help="replay events (file or dataset) into the clicks topic",
        description="Send click events to Kafka. FILE is JSONL (one event per line) or Parquet; lines that "
        "are not valid events are still sent (the worker routes them to the DLQ with a reason).")
    add_kafka_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", type=Path, help="JSONL or Parquet events")
    source.add_argument("--dataset",
                        help="a packaged dataset, e.g. ml-100k (its catalogue goes to --items-topic first)")
    parser.add_argument("--items", type=Path, help="optional items file (JSONL: item_id, text/title) for FILE")
    parser.add_argument("--topic", default=Topics.clicks, help="the clicks topic (default %(default)s)")
    parser.add_argument("--items-topic", default=Topics.items, help="the catalogue topic (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=WorkerConfig.partitions,
                        help="partitions of the clicks topic")
    parser.add_argument("--envelope", type=int, default=100, help="events per message (1: one event per message)")
    parser.add_argument("--speed", type=float, default=0.0,
                        help="event-time seconds replayed per wall second (0: as fast as possible)")
    parser.add_argument("--limit", type=int, default=0, help="send at most this many events")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def raw_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        for line in handle:
            line = line.strip()
            if line:
                yield line


def file_events(path: Path) -> Iterator[dict | bytes]:
    """Events of a file: dicts where a line parses as a JSON object, else the raw bytes (sent as they are)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.read_table(path).to_batches():
            yield from (dict((k, v) for k, v in row.items() if v is not None) for row in batch.to_pylist())
        return
    for line in raw_lines(path):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            yield line
            continue
        yield obj if isinstance(obj, dict) and "item_id" in obj else line


def paced(events: Iterator[dict | bytes], speed: float) -> Iterator[dict | bytes]:
    """Hold each event back until its event time, compressed by `speed`, is due on the wall clock."""
    first_ts = None
    started = time.monotonic()
    for event in events:
        ts = event.get("ts") if isinstance(event, dict) else None
        if speed > 0 and isinstance(ts, int):
            first_ts = ts if first_ts is None else first_ts
            delay = (ts - first_ts) / 1000 / speed - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)
        yield event


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from infra.admin import TopicSpec, ensure_topics, require_broker
    from streams.producer import ClickProducer, produce_items

    settings = settings_from_args(args)
    if args.file is not None and not args.file.exists():   # before the broker: say the first thing wrong
        raise FileNotFoundError(f"no such file: {args.file}")
    require_broker(settings)
    # explicit topics: the embedded broker would auto-create 4 partitions and never compact `items`
    ensure_topics(settings, {args.topic: TopicSpec(partitions=args.partitions),
                             args.items_topic: TopicSpec(partitions=args.partitions, compact=True)})
    if args.dataset:
        from models.datasets import load_dataset

        log = load_dataset(args.dataset)
        sent_items = produce_items(settings, args.items_topic, log.items)
        print(f"catalogue: {sent_items} items -> {args.items_topic}")
        events, total = log.iter_events(), len(log.ts_ms)
    else:
        if args.items:
            items = {str(o["item_id"]): str(o.get("text") or o.get("title") or "")
                     for o in map(orjson.loads, raw_lines(args.items))}
            print(f"catalogue: {produce_items(settings, args.items_topic, items)} items -> {args.items_topic}")
        events, total = file_events(args.file), None
    if args.limit:
        total = min(total or args.limit, args.limit)
    started = time.monotonic()
    sent = 0
    with ClickProducer(settings, args.topic, args.partitions, envelope=args.envelope) as producer, \
            Progress(disable=args.quiet, transient=True) as progress:
        task = progress.add_task(f"producing to {args.topic}", total=total)
        for event in paced(events, args.speed):
            if isinstance(event, bytes):
                producer.send_raw(event)
            else:
                producer.send(event)
            sent += 1
            if sent % 1000 == 0:
                progress.update(task, completed=sent)
            if args.limit and sent >= args.limit:
                break
    seconds = time.monotonic() - started
    print(orjson.dumps({"events": sent, "seconds": round(seconds, 3),
                        "events_per_s": round(sent / max(seconds, 1e-9))}).decode())
    return 0
