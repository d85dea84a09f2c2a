"""Offline rolling-origin backtest: features and targets from an `EventLog`, forecasts, metrics, JSON.

Owns the offline path from events to the `trail backtest --json` object: the per-origin evaluation at
`models.backtest_data.backtest_origins` (one per slot, features and targets from `models.backtest_data`)
and its summary: pooled metrics with block-bootstrap intervals over origins,
each method's paired difference against the best baseline with a Diebold-Mariano-style p-value, and
the same per item segment (cold, rose, rest). Window math is `models.windows` and the signals are `models.features`,
the same functions the stream calls, so offline features equal the stream's. Vectorised: events are
aggregated once per log into (item, slot, count) rows with numpy; loops run per origin or boundary,
never per event. No Kafka, no plotting (see `models.backtest_report`), no CLI (see `streams.cli.backtest`).

Leakage: at origin b every scorer sees `log.before(b)` only (events at or after b are not in the log
it is given), and `feature_batch_at` itself reads only slots < b.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from models import metrics
from models.backtest_data import backtest_origins, codes_of, feature_batch_at, slot_counts, targets_at
from models.datasets import EventLog
from models.features import FeatureBatch
from models.scoring import FittableScorer, Scorer
from models.windows import WindowSpec

USER_KS = (5, 10, 20)
ITEM_K = 10
EXPLAINED_PER_ORIGIN = 10
# check_explanation(text, signals, forecast, last_count, item_text) -> (faithful, direction_consistent)
ExplanationCheck = Callable[[str, dict[str, float], float, float, str], tuple[bool, bool]]


# --- one origin ------------------------------------------------------------------------------------------


def forecasts_at(
    log: EventLog, spec: WindowSpec, scorers: Sequence[Scorer], origin_slot: int,
    on_step: Callable[[str], None] | None = None,
) -> tuple[FeatureBatch, dict[str, np.ndarray]]:
    """Features at an origin and every scorer's forecast, computed from the events before it only."""
    history = log.before(spec.boundary_ms(origin_slot))
    batch = feature_batch_at(history, spec, origin_slot)
    forecasts = {}
    for scorer in scorers:
        if isinstance(scorer, FittableScorer):
            scorer.fit(history, spec, origin_slot)
        forecasts[scorer.name] = np.asarray(scorer.forecast(batch), dtype=np.float64)
        if on_step:
            on_step(scorer.name)
    return batch, forecasts


def user_interactions_at(
    log: EventLog, spec: WindowSpec, origin_slot: int, batch: FeatureBatch
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) interactions in the target bucket: user index and the item's batch row.

    The row is -1 for items not in the batch (not active at the origin); events without a user are left out.
    """
    start, end = np.searchsorted(
        log.ts_ms, [spec.boundary_ms(origin_slot), spec.boundary_ms(origin_slot + spec.slots_per_bucket)]
    )
    users = log.user_code[start:end]
    items = log.item_code[start:end][users >= 0]
    users = users[users >= 0]
    n_vocab = max(len(log.item_vocab), 1)
    pairs = np.unique(users * n_vocab + items)
    row_of_code = np.full(n_vocab, -1, dtype=np.int64)
    row_of_code[codes_of(log, batch.item_ids)] = np.arange(len(batch))
    return pairs // n_vocab, row_of_code[pairs % n_vocab]


@dataclass
class OriginRecord:
    """Everything one origin contributes to the metrics (and to the report's plots)."""

    origin_slot: int
    batch: FeatureBatch
    targets: np.ndarray                      # int64 [n]: true next-bucket counts of the batch's items
    forecasts: dict[str, np.ndarray]         # scorer name -> float64 [n]
    user_index: np.ndarray                   # int64 [m]: one row per distinct (user, item) in the target bucket
    user_item_row: np.ndarray                # int64 [m]: the item's batch row, -1 if not active
    explanation_checks: dict[str, np.ndarray] = field(default_factory=dict)  # name -> bool [explained, 2]


def explanation_checks(
    scorer: Scorer, batch: FeatureBatch, forecast: np.ndarray, check: ExplanationCheck
) -> np.ndarray:
    """(faithful, direction_consistent) of the scorer's explanations of its top items, bool [k, 2]."""
    top = metrics.ranking_order(forecast)[:EXPLAINED_PER_ORIGIN]
    texts = scorer.explain(batch, forecast, top)
    last_count = batch.signals["last_count"]
    return np.array(
        [check(text, batch.signals_of(int(i)), float(forecast[i]), float(last_count[i]), batch.texts[i])
         for text, i in zip(texts, top, strict=True)],
        dtype=bool,
    ).reshape(-1, 2)


def evaluate_origins(
    log: EventLog,
    spec: WindowSpec,
    scorers: Sequence[Scorer],
    origins: Sequence[int],
    explain: Mapping[str, ExplanationCheck] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[OriginRecord]:
    """Forecasts, truths and user interactions at every origin (`explain`: scorer name -> checker)."""
    records = []
    for origin_slot in origins:
        batch, forecasts = forecasts_at(log, spec, scorers, origin_slot, on_step)
        user_index, user_item_row = user_interactions_at(log, spec, origin_slot, batch)
        record = OriginRecord(
            origin_slot=origin_slot,
            batch=batch,
            targets=targets_at(log, spec, origin_slot, batch.item_ids),
            forecasts=forecasts,
            user_index=user_index,
            user_item_row=user_item_row,
        )
        for scorer in scorers:
            if explain and scorer.name in explain:
                record.explanation_checks[scorer.name] = explanation_checks(
                    scorer, batch, forecasts[scorer.name], explain[scorer.name])
        records.append(record)
    return records


# --- metrics over all origins ----------------------------------------------------------------------------
#
# Every metric is pooled over origins from per-origin sums (`metrics.OriginSums`): the point value is
# the pooled one (MAE over all (origin, item) rows, NDCG averaged over origins, user metrics over all
# (origin, user) rows), and intervals resample whole origins in circular blocks, the same resamples
# for every method (so they are paired). A block covers one bucket of slots: origins closer than that
# share target slots.

SEGMENTS = ("cold", "rose", "rest")
COLD_BUCKETS = 4   # "cold": first seen in the last 4 buckets before the origin (4 weeks on ml-100k)
LOWER_IS_BETTER = frozenset({"mae", "rmsle"})


def item_sums(record: OriginRecord, method: str, rows: np.ndarray) -> dict[str, tuple[float, float]]:
    """(numerator, denominator) of every item metric at one origin, over the batch rows `rows` (bool mask)."""
    forecast, truth = record.forecasts[method][rows], record.targets[rows].astype(np.float64)
    called, correct = metrics.rising_calls(forecast, truth, record.batch.signals["last_count"][rows])
    out = {
        "mae": (float(metrics.absolute_errors(forecast, truth).sum()), float(rows.sum())),
        "rmsle": (float(metrics.squared_log_errors(forecast, truth).sum()), float(rows.sum())),
    }
    for name, metric in ((f"item_ndcg@{ITEM_K}", metrics.item_ndcg_at_k),
                         (f"item_recall@{ITEM_K}", metrics.item_recall_at_k)):
        value = metric(forecast, truth, ITEM_K) if rows.any() else float("nan")
        out[name] = (value, 1.0) if np.isfinite(value) else (0.0, 0.0)   # undefined: the origin does not count
    out["rising_precision"] = (float(correct.sum()), float(called.sum()))
    return out


def user_sums(record: OriginRecord, method: str) -> dict[str, tuple[float, float]]:
    """(sum over the origin's users, number of users) of every user metric at one origin."""
    item_rank = metrics.ranks(record.forecasts[method])
    row = record.user_item_row
    rank = np.where(row >= 0, item_rank[np.maximum(row, 0)], metrics.UNRANKED)
    out = {}
    for k in USER_KS:
        for name, values in metrics.user_metrics_at_k(record.user_index, rank, k).items():
            out[f"user_{name}@{k}"] = (float(values.sum()), float(len(values)))
    return out


def stacked(per_origin: list[dict[str, tuple[float, float]]]) -> dict[str, metrics.OriginSums]:
    """Per-origin (numerator, denominator) dicts -> one `OriginSums` per metric."""
    names = per_origin[0].keys() if per_origin else ()
    return {
        name: metrics.OriginSums(
            numerator=np.array([o[name][0] for o in per_origin], dtype=np.float64),
            denominator=np.array([o[name][1] for o in per_origin], dtype=np.float64),
            root=name == "rmsle",
        )
        for name in names
    }


def method_sums(records: Sequence[OriginRecord], method: str) -> dict[str, metrics.OriginSums]:
    """Every item and user metric of `method` as per-origin sums over all active items."""
    return stacked([{**item_sums(r, method, np.ones(len(r.batch), dtype=bool)), **user_sums(r, method)}
                    for r in records])


def first_seen_slots(log: EventLog, spec: WindowSpec) -> np.ndarray:
    """Per item code, the slot of its first event in the log (int64). An item active before an origin
    has its first event before it, so reading the whole log here reads no future of that item."""
    rows = slot_counts(log, spec)
    first = np.full(len(log.item_vocab), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, rows.item_code, rows.slot)
    return first


def segment_of_rows(record: OriginRecord, log: EventLog, first_slot: np.ndarray) -> np.ndarray:
    """Segment index (into SEGMENTS) of each batch row: cold first, then rose (last bucket rising on the
    one before, `metrics.rising_mask`), then the rest."""
    batch = record.batch
    cold = first_slot[codes_of(log, batch.item_ids)] >= record.origin_slot - COLD_BUCKETS * batch.spec.slots_per_bucket
    rose = metrics.rising_mask(batch.signals["last_count"], batch.signals["prev_count"])
    return np.where(cold, 0, np.where(rose, 1, 2))


def segment_sums(records: Sequence[OriginRecord], method: str, segments: Sequence[np.ndarray]
                 ) -> dict[str, dict[str, metrics.OriginSums]]:
    """Item metrics of `method` per segment (segment name -> metric -> per-origin sums)."""
    return {name: stacked([item_sums(r, method, rows == s) for r, rows in zip(records, segments, strict=True)])
            for s, name in enumerate(SEGMENTS)}


def values_with_intervals(sums: Mapping[str, metrics.OriginSums], idx: np.ndarray) -> dict:
    """{metric: value, metric_ci: [low, high]} from per-origin sums and the origin resamples `idx`."""
    out: dict = {}
    for name, metric_sums in sums.items():
        out[name] = metric_sums.value
        out[f"{name}_ci"] = list(metric_sums.interval(idx))
    if "rising_precision" in sums:
        out["rising_calls"] = int(round(float(sums["rising_precision"].denominator.sum())))
    return out


def best_baseline(sums: Mapping[str, Mapping[str, metrics.OriginSums]], baselines: Sequence[str], metric: str
                  ) -> str | None:
    """The baseline with the best pooled value of `metric` (lowest for errors); ties: the first listed."""
    values = [(sums[b][metric].value, b) for b in baselines if np.isfinite(sums[b][metric].value)]
    if not values:
        return None
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    return min(values, key=lambda pair: (sign * pair[0], baselines.index(pair[1])))[1]


def verdict(comparison: dict, metric: str, alpha: float) -> str:
    """'better' / 'worse' when p < alpha and the interval excludes 0, else 'not significant'."""
    low, high = comparison["diff_ci"]
    significant = comparison["p_value"] < alpha and (low > 0 or high < 0)  # False when any of them is NaN
    if not significant:
        return "not significant"
    lower = comparison["diff"] < 0
    return "better" if lower == (metric in LOWER_IS_BETTER) else "worse"


def paired_comparisons(sums: Mapping[str, Mapping[str, metrics.OriginSums]], baselines: Sequence[str],
                       idx: np.ndarray, horizon: int, alpha: float = 0.05) -> dict:
    """Per metric: the best baseline, and every other method's paired difference against it."""
    out = {}
    for metric in next(iter(sums.values())):
        best = best_baseline(sums, baselines, metric)
        entry: dict = {"best_baseline": best, "lower_is_better": metric in LOWER_IS_BETTER, "methods": {}}
        for method in sums:
            if best is None or method == best:
                continue
            comparison = metrics.paired_difference(sums[method][metric], sums[best][metric], idx, horizon)
            comparison["verdict"] = verdict(comparison, metric, alpha)
            entry["methods"][method] = comparison
        out[metric] = entry
    return out


def explanation_metrics(records: Sequence[OriginRecord], method: str) -> dict:
    """Shares of the explained items whose explanation is faithful / direction-consistent."""
    per_origin = [r.explanation_checks[method] for r in records if method in r.explanation_checks]
    checks = np.concatenate(per_origin) if per_origin else np.zeros((0, 2), dtype=bool)
    if not len(checks):
        return {}
    return {
        "faithfulness": float(checks[:, 0].mean()),
        "direction_consistency": float(checks[:, 1].mean()),
        "explained": int(len(checks)),
    }


def origin_iso(spec: WindowSpec, origin_slot: int) -> str:
    return datetime.fromtimestamp(spec.boundary_ms(origin_slot) / 1000, tz=UTC).isoformat()


def summarise(
    records: Sequence[OriginRecord], log: EventLog, spec: WindowSpec, methods: Sequence[str],
    n_boot: int, seed: int, baselines: Sequence[str] | None = None,
) -> dict:
    """The `trail backtest --json` object (without "seconds"); `baselines` default to every method."""
    baselines = list(baselines if baselines is not None else methods)
    horizon = spec.slots_per_bucket               # origins closer than this share target slots
    idx = metrics.circular_block_indices(len(records), horizon, n_boot, seed)
    sums = {method: method_sums(records, method) for method in methods}
    first_slot = first_seen_slots(log, spec)
    segments = [segment_of_rows(r, log, first_slot) for r in records]
    by_segment = {method: segment_sums(records, method, segments) for method in methods}
    results = {method: {**values_with_intervals(sums[method], idx), **explanation_metrics(records, method)}
               for method in methods}
    return {
        "dataset": log.name,
        "slot_s": spec.slot_s,
        "bucket_s": spec.bucket_s,
        "n_buckets": spec.n_buckets,
        "origins": [origin_iso(spec, r.origin_slot) for r in records],
        "n_item_forecasts": int(sum(len(r.batch) for r in records)),
        "n_user_origin_rows": int(sum(len(np.unique(r.user_index)) for r in records)),
        "bootstrap": {"n": n_boot, "seed": seed, "level": 0.95, "method": "circular block bootstrap over origins",
                      "block_length": int(min(horizon, len(records)))},
        "results": results,
        "test": {"name": "Diebold-Mariano", "horizon": horizon, "alpha": 0.05,
                 "variance": "long-run (HAC) over lags < horizon, Harvey-Leybourne-Newbold correction, "
                             "Student t with n_origins - 1 df"},
        "paired": paired_comparisons(sums, baselines, idx, horizon),
        "segments": {
            name: {
                "n_item_forecasts": int(sum(int((rows == s).sum()) for rows in segments)),
                "results": {m: values_with_intervals(by_segment[m][name], idx) for m in methods},
                "paired": paired_comparisons({m: by_segment[m][name] for m in methods}, baselines, idx, horizon),
            }
            for s, name in enumerate(SEGMENTS)
        },
    }


def run_backtest(
    log: EventLog,
    spec: WindowSpec,
    scorers: Sequence[Scorer],
    n_origins: int,
    n_boot: int = 1000,
    seed: int = 0,
    explain: Mapping[str, ExplanationCheck] | None = None,
    on_step: Callable[[str], None] | None = None,
    baselines: Sequence[str] | None = None,
    on_records: Callable[[list[OriginRecord]], None] | None = None,
) -> dict:
    """Rolling-origin backtest of `scorers` at the last `n_origins` slots: the JSON object.

    `on_step(scorer name)` follows progress; `on_records` receives the per-origin records (the report's plots).
    """
    started = time.perf_counter()
    origins = backtest_origins(log, spec, n_origins)
    records = evaluate_origins(log, spec, scorers, origins, explain, on_step)
    if on_records:
        on_records(records)
    result = summarise(records, log, spec, [s.name for s in scorers], n_boot, seed, baselines)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result
