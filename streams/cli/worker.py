"""`trail worker`: run one Faust worker (several may run side by side; each takes its share of partitions)."""

from __future__ import annotations

import argparse
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from export.bundle import PIN_ENV
from infra.internal_auth import KEY_ENV, KEY_FILE_ENV
from models.windows import WindowSpec
from streams.cli.common import (
    add_kafka_args,
    add_topic_args,
    add_window_args,
    settings_from_args,
    topics_from_args,
    window_spec_from_args,
)
from streams.config import WorkerConfig


def scorer_pin(text: str) -> str:
    """argparse type of --scorer-sha256: 64 hex digits."""
    from export.bundle import parse_sha256

    try:
        return parse_sha256(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "worker", help="run a Faust worker: count clicks in windows, score, emit trends",
        description="Consume click events, keep per-item sliding-window counts in RocksDB, and at every "
        "slot boundary crossed by the event-time watermark emit the global top-K trending items with "
        "explanations to the trending topic. Run several with distinct --worker-id to share partitions.")
    add_kafka_args(parser)
    add_topic_args(parser)
    add_window_args(parser, WindowSpec())
    parser.add_argument("--top-k", type=int, default=WorkerConfig.top_k, help="trending items per step")
    parser.add_argument("--max-candidates", type=int, default=WorkerConfig.max_candidates,
                        help="items per partition a scoring step considers: the most active recently "
                        "(a bounded heavy-hitter summary, so memory stays flat with millions of items)")
    parser.add_argument("--scorer", default=WorkerConfig.scorer,
                        help="'velocity' (baseline) or a TRAIL ONNX bundle NAME|DIR (artifacts/bundles/NAME); "
                        "a missing/corrupt bundle falls back to the baseline and is reloaded when it changes")
    parser.add_argument("--scorer-sha256", type=scorer_pin, default=os.environ.get(PIN_ENV) or None, metavar="HEX",
                        help="pin the approved bundle: the sha256 of its manifest.json bytes, which `trail export` "
                        "prints (the manifest lists every file's sha256). Any other bundle is refused: the worker "
                        f"exits at start, and a hot reload keeps the current scorer (default: ${PIN_ENV})")
    parser.add_argument("--reload-check-s", type=float, default=WorkerConfig.reload_check_s,
                        help="at a step, look for a changed bundle manifest if this long has passed since the last "
                        "look (0: at every step); a changed bundle is verified and swapped in without a restart")
    parser.add_argument("--step-budget-s", type=float, default=WorkerConfig.step_budget_s,
                        help="a model step slower than this is scored by the baseline instead")
    parser.add_argument("--data-dir", type=Path, default=WorkerConfig.data_dir,
                        help="RocksDB state lives in DATA_DIR/WORKER_ID")
    parser.add_argument("--worker-id", default=WorkerConfig.worker_id, help="distinct per worker on one machine")
    parser.add_argument("--internal-key-file", type=Path, default=os.environ.get(KEY_FILE_ENV) or None, metavar="PATH",
                        help="hex HMAC key(s) that sign and verify the internal topics' messages, shared by every "
                        "worker of the app: first line signs, further lines are also accepted (rotation). "
                        f"Default: ${KEY_FILE_ENV}, else ${KEY_ENV} (hex), else DATA_DIR/keys/APP_ID.key, "
                        "created on first use")
    parser.add_argument("--app-id", default=WorkerConfig.app_id, help="consumer group / internal topic prefix")
    parser.add_argument("--batch-max-messages", type=int, default=WorkerConfig.batch_max_messages,
                        help="clicks messages per stage-1 batch (at most; a batch also ends after --batch-within-s)")
    parser.add_argument("--batch-within-s", type=float, default=WorkerConfig.batch_within_s,
                        help="a stage-1 batch of clicks messages ends after this long (or at --batch-max-messages); "
                        "the deltas, and so each step, wait for it (default %(default)s)")
    parser.add_argument("--fetch-max-wait-ms", type=int, default=WorkerConfig.fetch_max_wait_ms,
                        help="longest the broker may hold a fetch with nothing new (faust's own 1500 made each hop "
                        "on the embedded broker up to that slow; default %(default)s)")
    parser.add_argument("--batch-drain", action=argparse.BooleanOptionalAction, default=WorkerConfig.batch_drain,
                        help="one flow-control wait per fetched batch instead of faust's one per message, and "
                             "clicks handed to their agent as lists, not one event at a time (streams/batch_drain.py; "
                             "~5x single-event ingest, docs/benchmarks.md); --no-batch-drain: faust's loop")
    parser.add_argument("--idle-flush-s", type=float, default=WorkerConfig.idle_flush_s,
                        help="if > 0, once a partition has had no input for this many seconds and every input "
                        "partition is read to its end, score up to the latest event (readers then declare a "
                        "silent partition idle after this long, if shorter than --source-idle-timeout-s)")
    parser.add_argument("--max-future-s", type=int, default=WorkerConfig.max_future_s,
                        help="reject events whose time is this far beyond the wall clock")
    parser.add_argument("--min-event-time", type=event_time_ms, default=WorkerConfig.min_ts_ms, metavar="DATE|MS",
                        help="reject events before this time (ISO date or epoch ms; default 2000-01-01); "
                        "replaying older logs such as ml-100k (1997-98) needs e.g. 1990-01-01")
    parser.add_argument("--recovery-give-up-s", type=float, default=WorkerConfig.recovery_give_up_s,
                        help="if table recovery makes no progress for this long, exit with code 70 so a "
                        "supervisor restarts the worker (0: wait forever; it is logged after 60 s either way)")
    parser.add_argument("--source-idle-timeout-s", type=float, default=WorkerConfig.source_idle_timeout_s,
                        help="an input partition silent for this many wall-clock seconds stops holding back "
                        "the watermark until it sends again (0: never; default %(default)s)")
    parser.add_argument("--embedded-broker-fix", choices=("auto", "on", "off"),
                        default=WorkerConfig.embedded_broker_fix,
                        help="tansu end-offset shim: auto = only against the embedded broker")
    parser.add_argument("--log-level", default=WorkerConfig.log_level)
    add_http_args(parser)
    parser.set_defaults(func=run)


def event_time_ms(text: str) -> int:
    """An event time from the command line: epoch milliseconds, or an ISO date/time (UTC if no zone)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch milliseconds nor an ISO date") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        kafka=settings_from_args(args), topics=topics_from_args(args), app_id=args.app_id,
        partitions=args.partitions, spec=window_spec_from_args(args), top_k=args.top_k,
        max_candidates=args.max_candidates,
        data_dir=args.data_dir, internal_key_file=args.internal_key_file,
        batch_max_messages=args.batch_max_messages, batch_within_s=args.batch_within_s, batch_drain=args.batch_drain,
        fetch_max_wait_ms=args.fetch_max_wait_ms, idle_flush_s=args.idle_flush_s,
        max_future_s=args.max_future_s, min_ts_ms=args.min_event_time,
        recovery_give_up_s=args.recovery_give_up_s, source_idle_timeout_s=args.source_idle_timeout_s,
        scorer=args.scorer, scorer_sha256=args.scorer_sha256, step_budget_s=args.step_budget_s,
        reload_check_s=args.reload_check_s,
        embedded_broker_fix=args.embedded_broker_fix,
        worker_id=args.worker_id, log_level=args.log_level,
        metrics_port=args.metrics_port, metrics_host=args.metrics_host)


def add_http_args(parser: argparse.ArgumentParser) -> None:
    """`trail worker [run|status]`: the HTTP endpoints (streams.http_server) and the status probe."""
    parser.add_argument("action", nargs="?", choices=("run", "status"), default="run",
                        help="run the worker (default), or status: ask a running one's /readyz (exit 0 ready, "
                        "1 alive but not ready, 3 no answer)")
    parser.add_argument("--metrics-port", "--port", type=int, default=WorkerConfig.metrics_port, metavar="PORT",
                        help="serve /metrics, /healthz, /readyz and the live trends page on this port "
                        "(0: off; recommended 9464; `status` asks 9464 when 0)")
    parser.add_argument("--metrics-host", default=WorkerConfig.metrics_host,
                        help="address to serve on (0.0.0.0 in a container, for probes and scrapers)")


def run(args: argparse.Namespace) -> int:
    from streams.runner import run_worker

    if args.action == "status":
        from streams.worker_status import print_worker_status

        return print_worker_status(args.metrics_host, args.metrics_port or 9464)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_worker(config_from_args(args))
