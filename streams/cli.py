"""The `trail` command: one argparse front door that dispatches to each subcommand's module.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``; that function registers
the parser and sets ``func`` (called with the parsed args, returns an exit code). Modules keep heavy
imports (torch, faust, onnxruntime) inside their run functions so `trail --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from infra.errors import TrailError

# subcommand -> module with add_parser(); order is the order shown in --help
SUBCOMMAND_MODULES = {
    "broker": "infra.broker_cli",
    "worker": "streams.worker_cli",
    "produce": "streams.produce_cli",
    "tail": "streams.tail_cli",
    "train": "models.train_cli",
    "export": "export.cli",
    "backtest": "models.backtest_cli",
    "bench": "streams.bench_cli",
    "demo": "streams.demo_cli",
    "chaos": "streams.chaos_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trail",
        description="TRAIL: streaming trend detection with explained forecasts. "
        "Kafka commands take --bootstrap (default: $TRAIL_BOOTSTRAP, else 127.0.0.1:9092).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # a real missing dependency: say so loudly
                raise
            continue  # subcommand not part of this build
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (TrailError, ValueError, FileNotFoundError) as exc:   # the user can act on it: one line, no traceback
        if os.environ.get("TRAIL_DEBUG"):
            raise
        print(f"trail {argv_command(argv)}: error: {exc}", file=sys.stderr)
        return 2


def argv_command(argv: list[str] | None) -> str:
    words = sys.argv[1:] if argv is None else argv
    return next((w for w in words if not w.startswith("-")), "")


if __name__ == "__main__":
    sys.exit(main())
