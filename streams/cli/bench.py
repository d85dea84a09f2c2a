"""`trail bench`: benchmark commands, each printing one JSON object (keys and results in docs/benchmarks.md)."""

from __future__ import annotations

from streams.cli.common import register

# bench name -> module with add_bench_parser(subparsers)
BENCH_MODULES = {
    "ingest": "streams.bench_ingest",
    "score": "export.bench_score",
    "step": "streams.bench_step",
    "dedup": "streams.bench_dedup",
    "auth": "streams.bench_auth",
    "recovery": "streams.bench_recovery",
    "peer": "streams.bench_peer",
    "latency": "streams.bench_latency",
    "route": "streams.bench_route",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks of the hot paths (JSON output)",
                                   description="Benchmarks of the hot paths; each prints one JSON object.")
    benches = parser.add_subparsers(dest="bench", metavar="BENCH")
    register(benches, BENCH_MODULES, hook="add_bench_parser")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
