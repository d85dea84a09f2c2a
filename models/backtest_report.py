"""The backtest's Markdown report: a metrics table and PNG plots (matplotlib, Agg backend, no display).

Owns how results look: `markdown_table` (also pasted into the README) and `write_report`, which draws
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
BAR_METRICS = ("mae", "rmsle", "item_ndcg@10", "user_ndcg@10", "user_recall@20", "rising_precision")
TOP_ITEMS_PLOTTED = 6


def format_value(value: float | None, interval: Sequence[float] | None) -> str:
    """'0.123 [0.100, 0.150]', or '–' for a missing value (e.g. no rising calls)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if not interval or any(v is None or math.isnan(v) for v in interval):
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def markdown_table(result: dict) -> str:
    """One row per method, the main metrics with their 95 % bootstrap intervals."""
    header = "| method | " + " | ".join(label for _, label in TABLE_COLUMNS) + " |"
    rule = "|---|" + "---|" * len(TABLE_COLUMNS)
    rows = [header, rule]
    for method, values in result["results"].items():
        cells = [format_value(values.get(key), values.get(f"{key}_ci")) for key, _ in TABLE_COLUMNS]
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
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
    fig, axes = plt.subplots(2, 3, figsize=(14, 7), sharex=True, constrained_layout=True)
    for ax, item in zip(axes.flat, items, strict=False):
        rows = [dict(zip(r.batch.item_ids, range(len(r.batch)), strict=True)).get(item) for r in records]
        truth = [r.targets[i] if i is not None else np.nan for r, i in zip(records, rows, strict=True)]
        ax.plot(x, truth, color="black", linewidth=2.5, label="truth")
        for method in methods:
            forecast = [r.forecasts[method][i] if i is not None else np.nan for r, i in zip(records, rows, strict=True)]
            ax.plot(x, forecast, marker=".", linewidth=1, label=method)
        ax.set_title(texts.get(item, item).split(" | ")[0][:40], fontsize=9)
        ax.set_xticks(x, dates, rotation=45, fontsize=7)
        ax.set_xlabel("origin (month-day)")
        ax.set_ylabel("next-bucket count")
    axes.flat[0].legend(fontsize=7)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(directory: Path, result: dict, records: Sequence[OriginRecord], texts: dict[str, str],
                 command: str) -> Path:
    """report.md with the table and two PNG plots in `directory`; returns the report's path."""
    directory.mkdir(parents=True, exist_ok=True)
    plot_metric_bars(result, directory / "metrics.png")
    plot_top_item_forecasts(records, texts, directory / "top_items.png")
    explained = {m: v for m, v in result["results"].items() if "faithfulness" in v}
    lines = [
        f"# Backtest: {result['dataset']}",
        "",
        f"Command: `{command}`  ",
        f"Buckets of {result['bucket_s']} s (slots of {result['slot_s']} s, {result['n_buckets']} buckets of "
        f"history); origins: {', '.join(o[:10] for o in result['origins'])}; "
        f"{result['n_item_forecasts']} item forecasts, {result['n_user_origin_rows']} (origin, user) rows; "
        f"{result['seconds']:.1f} s.",
        "",
        markdown_table(result),
        "",
        f"Intervals: 95 % percentile bootstrap ({result['bootstrap']['n']} resamples, seed "
        f"{result['bootstrap']['seed']}) over (origin, item) rows for MAE, RMSLE and rising precision, over "
        "origins for item NDCG/Recall, over (origin, user) rows for user metrics.",
        "",
    ]
    for method, values in explained.items():
        lines += [f"Explanations of {method} (top {EXPLAINED_PER_ORIGIN} per origin, {values['explained']} in all): "
                  f"faithfulness {values['faithfulness']:.3f}, direction consistency "
                  f"{values['direction_consistency']:.3f}.", ""]
    lines += ["![metrics](metrics.png)", "", "![top items](top_items.png)", ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
