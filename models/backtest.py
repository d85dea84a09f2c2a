"""Offline rolling-origin backtest: features and targets from an `EventLog`, forecasts, metrics, JSON.

Owns the offline path from events to the `trail backtest --json` object: `feature_batch_at` and
`targets_at` (the training and evaluation data of every learner), `backtest_origins`, the per-origin
evaluation and its summary. Window math is `streams.windows` and the signals are `models.features`,
the same functions the stream calls, so offline features equal the stream's. Vectorised: events are
aggregated once per log into (item, slot, count) rows with numpy; loops run per origin or boundary,
never per event. No Kafka, no plotting (see `models.backtest_report`), no CLI (see `models.backtest_cli`).

Leakage: at origin b every scorer sees `log.before(b)` only (events at or after b are not in the log
it is given), and `feature_batch_at` itself reads only slots < b.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from models import metrics
from models.datasets import EventLog
from models.features import FeatureBatch
from models.scoring import FittableScorer, Scorer
from streams.windows import WindowSpec, bucket_count_matrix, last_event_slot_matrix

USER_KS = (5, 10, 20)
ITEM_K = 10
EXPLAINED_PER_ORIGIN = 10
# check_explanation(text, signals, forecast, last_count, item_text) -> (faithful, direction_consistent)
ExplanationCheck = Callable[[str, dict[str, float], float, float, str], tuple[bool, bool]]


# --- (item, slot) counts of a log, built once per log and slot size ---------------------------------------


@dataclass(frozen=True)
class SlotCounts:
    """Distinct (slot, item) rows of a log with their event counts, sorted by slot then item code."""

    slot: np.ndarray        # int64, ascending
    item_code: np.ndarray   # int64, index into log.item_vocab
    count: np.ndarray       # int64

    def rows_between(self, first_slot: int, end_slot: int) -> slice:
        """The rows with first_slot <= slot < end_slot (a slice: the rows are sorted by slot)."""
        lo, hi = np.searchsorted(self.slot, [first_slot, end_slot], side="left")
        return slice(int(lo), int(hi))


_slot_counts_cache: weakref.WeakKeyDictionary[EventLog, dict[int, SlotCounts]] = weakref.WeakKeyDictionary()


def slot_counts(log: EventLog, spec: WindowSpec) -> SlotCounts:
    """The log's (slot, item, count) rows for `spec.slot_s`, cached per log (logs are immutable here)."""
    per_slot_size = _slot_counts_cache.setdefault(log, {})
    if spec.slot_s not in per_slot_size:
        n_vocab = max(len(log.item_vocab), 1)
        # ts_ms is sorted, so slots are too and a (slot, item) key sorts by slot first
        key = spec.slots_of(log.ts_ms) * n_vocab + log.item_code
        unique_keys, counts = np.unique(key, return_counts=True)
        per_slot_size[spec.slot_s] = SlotCounts(
            slot=unique_keys // n_vocab, item_code=unique_keys % n_vocab, count=counts.astype(np.int64)
        )
    return per_slot_size[spec.slot_s]


# --- features and targets (public: the TRAIL trainer builds its data with these) --------------------------


def feature_batch_at(log: EventLog, spec: WindowSpec, boundary_slot: int) -> FeatureBatch:
    """Features at a boundary of every active item (an event in the window), texts from `log.items`.

    Reads only slots in [boundary - window_slots, boundary): never the boundary's future. Items are
    ordered by id (the log's sorted vocabulary).
    """
    rows = slot_counts(log, spec)
    window = rows.rows_between(boundary_slot - spec.window_slots, boundary_slot)
    active_codes, local_index = np.unique(rows.item_code[window], return_inverse=True)
    slots = rows.slot[window]
    counts = bucket_count_matrix(local_index, slots, rows.count[window], boundary_slot, spec, len(active_codes))
    last_slot = last_event_slot_matrix(local_index, slots, boundary_slot, len(active_codes))
    item_ids = log.item_vocab[active_codes].tolist()
    return FeatureBatch(
        item_ids=item_ids,
        bucket_counts=counts,
        last_event_slot=last_slot,
        boundary_slot=boundary_slot,
        spec=spec,
        texts=[log.items.get(item, "") for item in item_ids],
    )


def codes_of(log: EventLog, item_ids: Sequence[str]) -> np.ndarray:
    """Positions of `item_ids` in `log.item_vocab` (int64), -1 for ids the log never saw."""
    ids = np.asarray(item_ids, dtype=str)
    vocab = log.item_vocab
    if not len(vocab) or not len(ids):
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(vocab, ids), len(vocab) - 1)
    return np.where(vocab[pos] == ids, pos, -1).astype(np.int64)


def targets_at(log: EventLog, spec: WindowSpec, boundary_slot: int, item_ids: Sequence[str]) -> np.ndarray:
    """True next-bucket counts (int64) of `item_ids`: events in [boundary, boundary + bucket).

    The caller makes sure the log covers that whole bucket (see `backtest_origins`).
    """
    rows = slot_counts(log, spec)
    target = rows.rows_between(boundary_slot, boundary_slot + spec.slots_per_bucket)
    per_code = np.bincount(rows.item_code[target], weights=rows.count[target], minlength=len(log.item_vocab))
    codes = codes_of(log, item_ids)
    return np.where(codes >= 0, per_code[np.maximum(codes, 0)], 0).round().astype(np.int64)


def backtest_origins(log: EventLog, spec: WindowSpec, n_origins: int) -> list[int]:
    """The last `n_origins` origins (slot indices), one bucket apart, each with a complete target bucket.

    The last origin's target bucket ends at the end of the log's last slot; the first origin must have
    a full window of history after the log's first slot.
    """
    if n_origins <= 0:
        raise ValueError(f"n_origins must be positive, got {n_origins}")
    if not len(log):
        raise ValueError(f"dataset {log.name!r} has no events")
    spb = spec.slots_per_bucket
    first_slot = int(spec.slot_of(int(log.ts_ms[0])))
    end_slot = int(spec.slot_of(int(log.ts_ms[-1]))) + 1
    last_origin = end_slot - spb
    origins = [last_origin - spb * k for k in range(n_origins - 1, -1, -1)]
    if origins[0] - spec.window_slots < first_slot:
        most = (last_origin - spec.window_slots - first_slot) // spb + 1
        raise ValueError(
            f"dataset {log.name!r} is too short for {n_origins} origins with a {spec.n_buckets}-bucket window "
            f"of {spec.bucket_s} s buckets: at most {max(most, 0)} origins fit; ask for fewer or a shorter window"
        )
    return origins


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


def with_ci(out: dict, name: str, value: float, interval: tuple[float, float]) -> None:
    out[name] = value
    out[f"{name}_ci"] = list(interval)


def item_metrics(records: Sequence[OriginRecord], method: str, n_boot: int, seed: int) -> dict:
    """MAE, RMSLE and rising-call precision over all (origin, item) rows; NDCG/Recall@10 per origin.

    Intervals: rows resampled for MAE / RMSLE / rising precision; origins resampled for NDCG / Recall.
    """
    forecast = np.concatenate([r.forecasts[method] for r in records])
    truth = np.concatenate([r.targets for r in records]).astype(np.float64)
    last = np.concatenate([r.batch.signals["last_count"] for r in records])
    out: dict = {}
    abs_err = metrics.absolute_errors(forecast, truth)
    with_ci(out, "mae", float(abs_err.mean()), metrics.bootstrap_mean_ci(abs_err, n_boot, seed))
    sq_log = metrics.squared_log_errors(forecast, truth)
    low, high = metrics.bootstrap_mean_ci(sq_log, n_boot, seed)
    with_ci(out, "rmsle", float(np.sqrt(sq_log.mean())), (float(np.sqrt(low)), float(np.sqrt(high))))
    ndcg = np.array([metrics.item_ndcg_at_k(r.forecasts[method], r.targets, ITEM_K) for r in records])
    recall = np.array([metrics.item_recall_at_k(r.forecasts[method], r.targets, ITEM_K) for r in records])
    with_ci(out, f"item_ndcg@{ITEM_K}", float(np.nanmean(ndcg)), metrics.bootstrap_mean_ci(ndcg, n_boot, seed))
    with_ci(out, f"item_recall@{ITEM_K}", float(np.nanmean(recall)),
            metrics.bootstrap_mean_ci(recall, n_boot, seed))
    called, correct = metrics.rising_calls(forecast, truth, last)
    precision = float(correct.sum() / called.sum()) if called.any() else float("nan")
    with_ci(out, "rising_precision", precision, metrics.bootstrap_ratio_ci(correct, called, n_boot, seed))
    out["rising_calls"] = int(called.sum())
    return out


def user_metrics(records: Sequence[OriginRecord], method: str, n_boot: int, seed: int) -> dict:
    """Recall/NDCG/HR@K averaged over (origin, user) rows, with intervals resampling those rows."""
    out: dict = {}
    for k in USER_KS:
        per_user: dict[str, list[np.ndarray]] = {"recall": [], "ndcg": [], "hr": []}
        for r in records:
            item_rank = metrics.ranks(r.forecasts[method])
            rank = np.where(r.user_item_row >= 0, item_rank[np.maximum(r.user_item_row, 0)], metrics.UNRANKED)
            for name, values in metrics.user_metrics_at_k(r.user_index, rank, k).items():
                per_user[name].append(values)
        for name, chunks in per_user.items():
            values = np.concatenate(chunks) if chunks else np.zeros(0)
            mean = float(values.mean()) if len(values) else float("nan")
            with_ci(out, f"user_{name}@{k}", mean, metrics.bootstrap_mean_ci(values, n_boot, seed))
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
    n_boot: int, seed: int,
) -> dict:
    """The `trail backtest --json` object (without "seconds")."""
    results = {}
    for method in methods:
        results[method] = {
            **item_metrics(records, method, n_boot, seed),
            **user_metrics(records, method, n_boot, seed),
            **explanation_metrics(records, method),
        }
    return {
        "dataset": log.name,
        "slot_s": spec.slot_s,
        "bucket_s": spec.bucket_s,
        "n_buckets": spec.n_buckets,
        "origins": [origin_iso(spec, r.origin_slot) for r in records],
        "n_item_forecasts": int(sum(len(r.batch) for r in records)),
        "n_user_origin_rows": int(sum(len(np.unique(r.user_index)) for r in records)),
        "bootstrap": {"n": n_boot, "seed": seed, "level": 0.95},
        "results": results,
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
) -> dict:
    """Rolling-origin backtest of `scorers` over the last `n_origins` buckets: the JSON object."""
    started = time.perf_counter()
    origins = backtest_origins(log, spec, n_origins)
    records = evaluate_origins(log, spec, scorers, origins, explain, on_step)
    result = summarise(records, log, spec, [s.name for s in scorers], n_boot, seed)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result
