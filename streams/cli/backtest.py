"""`trail backtest`: rolling-origin backtest of the baselines (and optionally a TRAIL model) on a log.

Parses arguments, loads the dataset, shows progress on stderr, prints the result (a table, or one JSON
object with --json) and writes the optional report. The work is `models.backtest`; heavy imports
(sklearn, matplotlib, torch via the model) happen inside `run` so `trail --help` stays fast.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from streams.cli.common import add_window_args, window_spec_from_args


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "backtest", help="offline rolling-origin backtest against the baselines",
        description="Forecast every active item's next-bucket count at each of the last N slot origins "
        "from data before the origin only; report MAE, RMSLE, item NDCG/Recall@10, rising-call precision "
        "and user Recall/NDCG/HR@5/10/20 with block-bootstrap intervals for every baseline (and --model), "
        "and each method's paired difference against the best baseline with a Diebold-Mariano p-value.")
    parser.add_argument("--dataset", required=True, metavar="NAME|PATH",
                        help="ml-100k (read from the recbole wheel) or a JSONL/Parquet click-event v1 file")
    parser.add_argument("--items", metavar="PATH", help="items file (JSONL/Parquet: item_id, text or title)")
    parser.add_argument("--model", metavar="NAME|DIR", help="also backtest a trained TRAIL model "
                        "(artifacts/models/NAME or a directory) and check its explanations")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--report", type=Path, metavar="DIR", help="write DIR/report.md with PNG plots")
    parser.add_argument("--origins", type=int, default=None,  # None: models.backtest_data.DEFAULT_ORIGINS (lazy import)
                        help="number of origins, one slot apart (default 50; ml-100k: 1998-02-26 ... 1998-04-16)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap resamples per interval (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the learned baselines")
    add_window_args(parser, None, "windows (default: the dataset's own; ml-100k: 1-day slots, 7-day buckets)",
                    lateness=False)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def load_model(name_or_path: str):
    """(scorer, explanation check) for a trained TRAIL model, imported lazily (torch is heavy)."""
    from models.faithfulness import check_explanation
    from models.trail_scorer import load_trail_scorer

    return load_trail_scorer(name_or_path), check_explanation


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from models.backtest_report import TABLE_COLUMNS, format_value, significance_lines

    # values only: a terminal is too narrow for intervals (they are in --json and --report)
    table = Table(title=f"{result['dataset']}: {len(result['origins'])} origins, buckets of "
                  f"{result['bucket_s']} s ({result['seconds']:.1f} s)",
                  caption="95 % block-bootstrap intervals: --json or --report DIR")
    table.add_column("method", no_wrap=True)
    for key, _ in TABLE_COLUMNS:
        table.add_column(key, justify="right")
    for method, values in result["results"].items():
        table.add_row(method, *[format_value(values.get(k), None) for k, _ in TABLE_COLUMNS])
    console = Console(width=None if sys.stdout.isatty() else 160)  # piped: do not cut columns at 80
    console.print(table)
    console.print(f"Paired differences against the best baseline ({result['test']['name']}, p < "
                  f"{result['test']['alpha']} and the 95 % block-bootstrap interval excluding 0):")
    for line in significance_lines(result["paired"]):
        console.print("  " + line, highlight=False)
    for method, values in result["results"].items():
        if "faithfulness" in values:
            console.print(f"{method}: faithfulness {values['faithfulness']:.3f}, "
                            f"direction consistency {values['direction_consistency']:.3f}")


def run(args: argparse.Namespace) -> int:
    import time

    import orjson
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from models.backtest import run_backtest
    from models.backtest_data import DEFAULT_ORIGINS
    from models.baselines import default_baselines
    from models.datasets import load_dataset

    started = time.perf_counter()
    log = load_dataset(args.dataset, args.items)
    spec = window_spec_from_args(args, log.default_spec())
    scorers = default_baselines(seed=args.seed)
    baselines = [s.name for s in scorers]
    explain = {}
    if args.model:
        model, check = load_model(args.model)
        scorers.append(model)
        if check is not None:
            explain[model.name] = check
    n_origins = args.origins or DEFAULT_ORIGINS
    records: list = []

    progress = Progress(TextColumn("[bold]backtest[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=Console(stderr=True), disable=args.quiet)
    with progress:
        task = progress.add_task(f"{log.name}: {n_origins} origins", total=n_origins * len(scorers))
        result = run_backtest(log, spec, scorers, n_origins, args.boot, args.seed, explain,
                              on_step=lambda name: progress.update(task, advance=1, description=name),
                              baselines=baselines, on_records=records.extend)
    result["seconds"] = round(time.perf_counter() - started, 3)   # with loading the dataset and the model

    if args.report:
        from models.backtest_report import write_report

        command = "trail " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "trail backtest"
        path = write_report(args.report, result, records, log.items, command)
        print(f"report: {path}", file=sys.stderr)
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
    else:
        print_table(result)
    return 0
