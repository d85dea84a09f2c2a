"""The `trail` command: one argparse front door that dispatches to each subcommand's module.

Each subcommand lives in its own module of this package (`streams.cli.<name>`) exposing
``add_parser(subparsers)``; that function registers the parser and sets ``func`` (called with the parsed
args, returns an exit code). The argument groups they share (Kafka, windows, topics) are in
`streams.cli.common`. Modules keep heavy imports (torch, faust, onnxruntime) inside their run functions so
`trail --help` stays fast; a module that fails to import shows in `--help` as unavailable, with the reason.
The one place errors become output: a `TrailError` (or ValueError, FileNotFoundError) is one
`trail COMMAND: error: ...` line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from infra.errors import TrailError
from streams.cli.common import register

# the subcommands, in the order --help shows them; each is the module streams.cli.<name>
SUBCOMMANDS = ("broker", "worker", "produce", "tail", "train", "export", "backtest", "bench", "demo", "chaos")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trail",
        description="TRAIL: streaming trend detection with explained forecasts. "
        "Kafka commands take --bootstrap (default: $TRAIL_BOOTSTRAP, else 127.0.0.1:9092).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    register(subparsers, {name: f"{__name__}.{name}" for name in SUBCOMMANDS})
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

