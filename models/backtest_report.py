"""The backtest's Markdown report: a metrics table and PNG plots (matplotlib, Agg backend, no display).

Owns how results look: `markdown_table` (also pasted into docs/backtest-and-results.md), the paired-difference lines and
table (`significance_lines`, `paired_table`), the per-segment tables, and `write_report`, which draws
forecast-vs-truth lines for the top items and metric bars with bootstrap intervals. Reads the
`trail backtest` JSON object and the per-origin records of `models.backtest`; computes no metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.backtest import EXPLAINED_PER_ORIGIN, OriginRecord, origin_iso

TABLE_COLUMNS = (
    ("mae", "MAE ↓"),
    ("rmsle", "RMSLE ↓"),
    ("item_ndcg@10", "item NDCG@10"),
    ("item_recall@10", "item Recall@10"),
    ("rising_precision", "rising prec."),
    ("user_recall@10", "user Recall@10"),
    ("user_ndcg@10", "user NDCG@10"),
    ("user_hr@10", "user HR@10"),
    ("user_recall@20", "user Recall@20"),
)
SEGMENT_COLUMNS = TABLE_COLUMNS[:5]
SEGMENT_TITLES = {"cold": "items first seen in the last 4 buckets", "rose": "items whose last bucket rose",
                  "rest": "the other items"}
BAR_METRICS = ("mae", "rmsle", "item_ndcg@10", "user_ndcg@10", "user_recall@20", "rising_precision")
TOP_ITEMS_PLOTTED = 6


def format_value(value: float | None, interval: Sequence[float] | None) -> str:
    """'0.123 [0.100, 0.150]', or '–' for a missing value (e.g. no rising calls)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if not interval or any(v is None or math.isnan(v) for v in interval):
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def markdown_table(result: dict, columns: Sequence[tuple[str, str]] = TABLE_COLUMNS) -> str:
    """One row per method, the main metrics with their 95 % bootstrap intervals."""
    header = "| method | " + " | ".join(label for _, label in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    rows = [header, rule]
    for method, values in result["results"].items():
        cells = [format_value(values.get(key), values.get(f"{key}_ci")) for key, _ in columns]
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def format_comparison(method: str, comparison: dict) -> str:
    """'ema -0.134 [-0.20, -0.07] p 0.001'."""
    low, high = comparison["diff_ci"]
    return f"{method} {comparison['diff']:+.3f} [{low:+.3f}, {high:+.3f}] p {comparison['p_value']:.3f}"


def significance_lines(paired: dict) -> list[str]:
    """One line per metric: its best baseline, and the methods significantly better or worse than it."""
    lines = []
    for metric, entry in paired.items():
        if entry["best_baseline"] is None:
            continue
        by_verdict: dict[str, list[str]] = {"better": [], "worse": [], "not significant": []}
        for method, comparison in entry["methods"].items():
            if comparison["diff"] is not None and not math.isnan(comparison["diff"]):
                by_verdict[comparison["verdict"]].append(method)
        parts = [f"{metric}: best baseline {entry['best_baseline']}"]
        for word in ("better", "worse"):
            if by_verdict[word]:
                parts.append(f"significantly {word}: " + ", ".join(
                    format_comparison(m, entry["methods"][m]) for m in by_verdict[word]))
        if by_verdict["not significant"]:
            parts.append("not significant: " + ", ".join(by_verdict["not significant"]))
        lines.append("; ".join(parts))
    return lines


def paired_table(paired: dict, metric_keys: Sequence[str]) -> str:
    """Markdown: per metric, the best baseline and each method's difference against it, * if significant."""
    methods: list[str] = []
    for key in metric_keys:
        for method in paired[key]["methods"]:
            if method not in methods:
                methods.append(method)
    header = "| metric | best baseline | " + " | ".join(methods) + " |"
    rows = [header, "|---|---|" + "---|" * len(methods)]
    for key in metric_keys:
        entry = paired[key]
        cells = []
        for method in methods:
            comparison = entry["methods"].get(method)
            if comparison is None or comparison["diff"] is None or math.isnan(comparison["diff"]):
                cells.append("–")
                continue
            mark = "**" if comparison["verdict"] != "not significant" else ""
            low, high = comparison["diff_ci"]
            cells.append(f"{mark}{comparison['diff']:+.3f} [{low:+.3f}, {high:+.3f}] p {comparison['p_value']:.3f}"
                         f"{mark}")
        rows.append(f"| {key} | {entry['best_baseline'] or '–'} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot_metric_bars(result: dict, path: Path) -> None:
    """One panel per metric: a bar per method with its bootstrap interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result["results"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, metric in zip(axes.flat, BAR_METRICS, strict=True):
        values = np.array([result["results"][m].get(metric) or np.nan for m in methods], dtype=float)
        cis = np.array([result["results"][m].get(f"{metric}_ci") or [np.nan, np.nan] for m in methods], dtype=float)
        errors = np.abs(np.vstack([values - cis[:, 0], cis[:, 1] - values]))
        ax.barh(methods, np.nan_to_num(values), xerr=np.nan_to_num(errors), color="tab:blue", alpha=0.7,
                capsize=3)
        ax.invert_yaxis()
        ax.set_title(metric)
    fig.suptitle(f"{result['dataset']}: metrics over {len(result['origins'])} origins (95 % bootstrap intervals)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def top_items(records: Sequence[OriginRecord], n: int) -> list[str]:
    """The n items with the largest true counts summed over the origins (ties by item id)."""
    totals: dict[str, int] = {}
    for record in records:
        for item, target in zip(record.batch.item_ids, record.targets.tolist(), strict=True):
            totals[item] = totals.get(item, 0) + target
    return sorted(totals, key=lambda item: (-totals[item], item))[:n]


def plot_top_item_forecasts(records: Sequence[OriginRecord], texts: dict[str, str], path: Path) -> None:
    """Per top item, its true next-bucket count at each origin against every method's forecast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = top_items(records, TOP_ITEMS_PLOTTED)
    methods = list(records[0].forecasts) if records else []
    x = np.arange(len(records))
    dates = [origin_iso(r.batch.spec, r.origin_slot)[5:10] for r in records]
    tick_every = max(1, len(records) // 10)   # daily origins: a label every few days stays readable
    fig, axes = plt.subplots(2, 3, figsize=(14, 7), sharex=True, constrained_layout=True)
    for ax, item in zip(axes.flat, items, strict=False):
        rows = [dict(zip(r.batch.item_ids, range(len(r.batch)), strict=True)).get(item) for r in records]
        truth = [r.targets[i] if i is not None else np.nan for r, i in zip(records, rows, strict=True)]
        ax.plot(x, truth, color="black", linewidth=2.5, label="truth")
        for method in methods:
            forecast = [r.forecasts[method][i] if i is not None else np.nan for r, i in zip(records, rows, strict=True)]
            ax.plot(x, forecast, linewidth=1, label=method)
        ax.set_title(texts.get(item, item).split(" | ")[0][:40], fontsize=9)
        ax.set_xticks(x[::tick_every], dates[::tick_every], rotation=45, fontsize=7)
        ax.set_xlabel("origin (month-day)")
        ax.set_ylabel("next-bucket count")
    axes.flat[0].legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_lines(result: dict, command: str) -> list[str]:
    """The report's head: command, geometry, origins, the metrics table and how its intervals were made."""
    origins = result["origins"]
    return [
        f"# Backtest: {result['dataset']}",
        "",
        f"Command: `{command}`  ",
        f"Buckets of {result['bucket_s']} s (slots of {result['slot_s']} s, {result['n_buckets']} buckets of "
        f"history); {len(origins)} origins, one per slot, {origins[0][:10]} … {origins[-1][:10]}; "
        f"{result['n_item_forecasts']} item forecasts, {result['n_user_origin_rows']} (origin, user) rows; "
        f"{result['seconds']:.1f} s.",
        "",
        markdown_table(result),
        "",
        f"Intervals: 95 % percentile circular block bootstrap over origins ({result['bootstrap']['n']} "
        f"resamples, blocks of {result['bootstrap']['block_length']} origins, seed {result['bootstrap']['seed']}); "
        "the same resamples for every method.",
        "",
    ]


def paired_lines(result: dict) -> list[str]:
    """The paired differences of every method against the best baseline, overall."""
    test = result["test"]
    return [
        f"## Paired differences against the best baseline (method − best; {test['name']} p-value, horizon "
        f"{test['horizon']} slots; bold: p < {test['alpha']} and the interval excludes 0)",
        "",
        paired_table(result["paired"], list(result["paired"])),
        "",
    ]


def segment_lines(result: dict) -> list[str]:
    """Item metrics and paired differences per segment."""
    lines = ["## By segment (each (origin, item) row in one: cold first, then rose, then the rest)", ""]
    for name, segment in result["segments"].items():
        lines += [f"### {name}: {SEGMENT_TITLES.get(name, name)} ({segment['n_item_forecasts']} item forecasts)",
                  "", markdown_table(segment, SEGMENT_COLUMNS), "",
                  paired_table(segment["paired"], [k for k, _ in SEGMENT_COLUMNS]), ""]
    return lines


def write_report(directory: Path, result: dict, records: Sequence[OriginRecord], texts: dict[str, str],
                 command: str) -> Path:
    """report.md with the tables and two PNG plots in `directory`; returns the report's path."""
    directory.mkdir(parents=True, exist_ok=True)
    plot_metric_bars(result, directory / "metrics.png")
    plot_top_item_forecasts(records, texts, directory / "top_items.png")
    lines = summary_lines(result, command) + paired_lines(result) + segment_lines(result)
    for method, values in result["results"].items():
        if "faithfulness" in values:
            lines += [f"Explanations of {method} (top {EXPLAINED_PER_ORIGIN} per origin, {values['explained']} in "
                      f"all): faithfulness {values['faithfulness']:.3f}, direction consistency "
                      f"{values['direction_consistency']:.3f}.", ""]
    lines += ["![metrics](metrics.png)", "", "Forecast against truth for the top items:", "",
              "![top items](top_items.png)", ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
