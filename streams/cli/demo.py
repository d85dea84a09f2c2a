"""`trail demo` (= `make demo`): the whole product on one machine, on real data.

Starts the embedded broker, makes sure a TRAIL bundle exists (trains and exports the `tiny` model
first if not), starts one worker scoring with it, replays MovieLens-100K time-compressed (32 weeks in
about a minute) and shows the explained trending items live as they change. At the end it writes the
trend records and a short report under artifacts/demo/ and says where they are. `--json` runs headless
and prints one summary object.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson

from infra.errors import CommandError
from infra.paths import REPO_ROOT
from streams.cli.common import topic_flags
from streams.config import Topics, WorkerConfig

ML100K_SPAN_S = 32 * 7 * 86_400


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="broker + model + worker + a replay of ml-100k, shown live",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="trail-tiny",
                        help="TRAIL bundle NAME|DIR to score with (built from the tiny model if missing)")
    parser.add_argument("--baseline", action="store_true", help="score with the velocity baseline, no model")
    parser.add_argument("--replay-s", type=float, default=60.0, help="wall seconds for the 32-week replay")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: replay end)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts" / "demo")
    parser.add_argument("--json", action="store_true", help="headless: print one summary object")
    parser.add_argument("--ui-port", type=int, default=0, help="port of the worker's live page and /metrics (0: free)")
    parser.set_defaults(func=run)


def say(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        print(message, flush=True)
    else:
        print(message, file=sys.stderr, flush=True)


def ensure_bundle(args: argparse.Namespace) -> str:
    """The bundle to score with, built (train tiny -> export) when it does not exist yet or has an old format."""
    from export.bundle import BundleError, read_manifest, resolve_bundle_dir

    try:
        read_manifest(resolve_bundle_dir(args.bundle))
        return args.bundle
    except BundleError as exc:
        if args.bundle != "trail-tiny":
            raise CommandError(f"bundle {args.bundle!r} is not usable ({exc}); build it with "
                             "`trail export MODEL --out ...`") from None
    trail = [sys.executable, "-m", "streams.cli"]
    if not (REPO_ROOT / "artifacts" / "models" / "trail-tiny" / "model_card.json").exists():
        say(args, "no trail-tiny model yet: training it (a few minutes on 2 cores)...")
        subprocess.run([*trail, "train", "--dataset", "ml-100k", "--base", "tiny"], check=True, cwd=REPO_ROOT,
                       stdout=sys.stderr if args.json else None)
    say(args, "exporting trail-tiny to ONNX...")
    subprocess.run([*trail, "export", "trail-tiny"], check=True, cwd=REPO_ROOT,
                   stdout=sys.stderr if args.json else None)
    return "trail-tiny"


def replay_dataset(bootstrap: str, topics: Topics, speed: float, done: threading.Event, stats: dict,
                   halt: threading.Event) -> None:
    from infra.kafka_config import KafkaSettings
    from models.datasets import load_dataset
    from streams.cli.produce import paced
    from streams.producer import ClickProducer, produce_items

    settings = KafkaSettings(bootstrap=bootstrap)
    log = load_dataset("ml-100k")
    produce_items(settings, topics.items, log.items)
    time.sleep(1.0)  # let the catalogue land before the first step needs titles
    started = time.monotonic()
    with ClickProducer(settings, topics.clicks, WorkerConfig.partitions, envelope=50) as producer:
        for event in paced(log.iter_events(), speed):
            if halt.is_set():   # --duration ran out: stop before the broker goes away under the producer
                break
            producer.send(event)
            stats["produced"] = stats.get("produced", 0) + 1
    stats["replay_s"] = time.monotonic() - started
    done.set()


def render_step(records: list[dict]):
    from rich.table import Table

    end = records[0]["window"]["end"] // 1000
    table = Table(title=f"Trending at {time.strftime('%Y-%m-%d', time.gmtime(end))} "
                  f"(model {records[0]['model']['name']})", expand=True)
    for column, kwargs in (("#", {"width": 3}), ("item", {"ratio": 2}), ("last 4 weeks", {"ratio": 1}),
                           ("next week", {"width": 9}), ("why", {"ratio": 4}), ("written by", {"width": 10})):
        table.add_column(column, **kwargs)
    for record in records:
        table.add_row(str(record["rank"]), record.get("title") or record["item_id"],
                      " ".join(map(str, record["recent_counts"][-4:])), f"{record['predicted_count']:.1f}",
                      record["explanation"], source_label(record))
    table.caption = ("written by: model = the TRAIL model wrote it and it passed the faithfulness check; "
                     "template = the grounded template")
    return table


def source_label(record: dict) -> str:
    """Who wrote a record's explanation, as the live view marks it: `model` (green) or `template` (dim)."""
    source = record.get("explanation_source") or "template"
    return f"[green]{source}[/]" if source == "model" else f"[dim]{source}[/]"


def faithfulness(records: list[dict]) -> float | None:
    """Share of the published explanations that pass the faithfulness checker."""
    from models.faithfulness import check_explanation

    if not records:
        return None
    ok = [check_explanation(r["explanation"], r["signals"], r["predicted_count"], r["signals"]["last_count"],
                            r.get("title", ""))[0]
          for r in records]
    return sum(ok) / len(ok)


def share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def model_faithfulness(status: dict, records: list[dict]) -> float | None:
    """Share of the scorer's *generated* explanations that passed the check before publishing (the worker
    replaces the others by templates); for the baseline scorer, the checker over its published templates."""
    generated = status.get("explanations_generated", 0)
    if generated:
        return (generated - status.get("explanations_replaced", 0)) / generated
    return faithfulness(records)


def settled_status(worker, n_records: int, timeout_s: float = 5.0) -> dict:
    """The worker's status once it counts every record read here as published (its status file is written
    every second, so a read right after the last record could miss that step's explanation counters)."""
    try:
        return worker.wait_for(lambda s: s.get("trends_emitted", 0) >= n_records, timeout_s,
                               f"{n_records} trend records counted in the status")
    except (TimeoutError, RuntimeError):
        return worker.status() or {}


def markdown_cell(value: object) -> str:
    """A value as one Markdown table cell: pipes escaped (an item text "Title | genres" would split the
    column) and line breaks flattened (they would end the row)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def write_outputs(out: Path, records: list[dict], summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "trends.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    last_end = max((r["window"]["end"] for r in records), default=0)
    last = sorted((r for r in records if r["window"]["end"] == last_end), key=lambda r: r["rank"])
    lines = ["# TRAIL demo report", "", "MovieLens-100K replayed through Kafka "
             f"(32 weeks in {summary['replay_s']} s), scored by `{summary['model']}`.", "",
             "| key | value |", "|---|---|"]
    lines += [f"| {markdown_cell(k)} | {markdown_cell(v)} |" for k, v in summary.items()]
    lines += ["", "## Last step", "", "| # | item | forecast | why |", "|---|---|---|---|"]
    lines += [f"| {r['rank']} | {markdown_cell(r.get('title') or r['item_id'])} | {r['predicted_count']:.1f} "
              f"| {markdown_cell(r['explanation'])} |" for r in last]
    lines += ["", "Data: F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and "
              "Context. ACM TiiS 5, 4, Article 19."]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from rich.live import Live

    from infra.broker import EmbeddedBroker
    from infra.kafka_config import KafkaSettings
    from infra.procs import free_port
    from streams.trend_reader import read_records
    from streams.worker_process import WorkerProcess

    scorer = "velocity" if args.baseline else ensure_bundle(args)
    topics = Topics()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="trail-demo-") as data_dir:
        say(args, f"embedded broker on {broker.bootstrap}; starting a worker scoring with {scorer}...")
        ui_port = args.ui_port or free_port()
        # ml-100k is from 1997-98, before the default earliest event time (2000-01-01)
        worker = WorkerProcess(["--bootstrap", broker.bootstrap, *topic_flags(topics), "--min-event-time", "1990-01-01",
                                "--scorer", scorer, "--top-k", str(args.top_k),
                                "--idle-flush-s", "3", "--slot-s", "86400", "--bucket-s", "604800",
                                "--n-buckets", "8", "--allowed-lateness-s", "86400", "--log-level", "warning",
                                "--metrics-port", str(ui_port)],
                               Path(data_dir)).start()
        done, halt, stats = threading.Event(), threading.Event(), {}
        producer = threading.Thread(target=replay_dataset, daemon=True,
                                    args=(broker.bootstrap, topics, ML100K_SPAN_S / args.replay_s, done, stats, halt))
        try:
            worker.wait_for(lambda s: len(s.get("assigned", [])) == WorkerConfig.partitions, 120, "partitions assigned")
            say(args, f"live trends page: http://127.0.0.1:{ui_port}/ (metrics at /metrics; up while the replay runs)")
            started = time.monotonic()
            producer.start()
            records: list[dict] = []
            step: list[dict] = []
            final_boundary_ms = last_boundary_ms()
            with Live(auto_refresh=False, transient=False) if not args.json else _NullLive() as live:
                for record in read_records(KafkaSettings(bootstrap=broker.bootstrap), topics.trending, True,
                                           idle_exit_s=8.0):
                    records.append(record)
                    if step and record["window"]["end"] != step[0]["window"]["end"]:
                        step = []
                    step.append(record)
                    live.update(render_step(step), refresh=True)
                    if args.duration and time.monotonic() - started > args.duration:
                        break
                    if record["window"]["end"] >= final_boundary_ms and len(step) >= args.top_k:
                        break
            status = settled_status(worker, len(records))
        finally:
            halt.set()
            if producer.is_alive():
                producer.join(timeout=30)
            worker.stop()
    elapsed = time.monotonic() - started
    summary = {
        "records": len(records),
        "steps": len({r["window"]["end"] for r in records}),
        "model": records[-1]["model"]["name"] if records else scorer,
        "faithfulness": model_faithfulness(status, records),
        "published_faithfulness": faithfulness(records),
        "explanations_generated": status.get("explanations_generated", 0),
        "explanations_replaced": status.get("explanations_replaced", 0),
        "events_per_s": round(status.get("counted", 0) / max(elapsed, 1e-9)),
        "events_counted": status.get("counted", 0),
        "replay_s": round(stats.get("replay_s", elapsed), 1),
        "out": str(args.out),
    }
    write_outputs(args.out, records, summary)
    if args.json:
        print(orjson.dumps(summary).decode())
    else:
        print(f"\n{summary['records']} trend records over {summary['steps']} steps, model {summary['model']}, "
              f"faithfulness of its explanations {share(summary['faithfulness'])}, of the published ones "
              f"{share(summary['published_faithfulness'])} (failing ones are replaced by templates)."
              f"\nRecords: {args.out / 'trends.jsonl'}\n"
              f"Report:  {args.out / 'REPORT.md'}")
    return 0


def last_boundary_ms() -> int:
    """The last boundary the idle flush scores for ml-100k: the slot of its newest event."""
    from models.datasets import load_dataset

    newest = int(load_dataset("ml-100k").ts_ms.max())
    return newest // 86_400_000 * 86_400_000


class _NullLive:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, *args, **kwargs) -> None:
        return None
