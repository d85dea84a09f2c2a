"""`trail bench`: benchmark commands, each printing one JSON object (keys documented in the README)."""

from __future__ import annotations

import importlib

# bench name -> module with add_bench_parser(subparsers)
BENCH_MODULES = {
    "ingest": "streams.bench_ingest",
    "score": "export.bench_score",
    "step": "streams.bench_step",
    "dedup": "streams.bench_dedup",
    "peer": "streams.bench_peer",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks of the hot paths (JSON output)",
                                   description="Benchmarks of the hot paths; each prints one JSON object.")
    benches = parser.add_subparsers(dest="bench", metavar="BENCH")
    for module_name in BENCH_MODULES.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_bench_parser(benches)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
