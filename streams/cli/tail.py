"""`trail tail`: read trend records from the trending topic, pretty (a table per step) or as JSON lines."""

from __future__ import annotations

import argparse
import sys

import orjson

from streams.cli.common import add_kafka_args, settings_from_args
from streams.config import Topics
from streams.trend_reader import first_sightings, read_records


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
