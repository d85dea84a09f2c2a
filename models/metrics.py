"""Forecast and ranking metrics of the backtest (PRODUCT.md "Evaluation protocol"), and bootstrap intervals.

Pure numpy on arrays of one origin (or of pooled origins); no data loading, no scorers here.
Rankings order items by forecast rounded to 6 decimals, highest first; ties keep the input order
(the backtest's rows are sorted by item id), as the stream's top-K does, so every metric is deterministic.

- Item level: MAE and RMSLE of counts; NDCG@K with the true next-bucket count as the (linear) gain;
  Recall@K against the true top-K (tie-aware: every item whose count reaches the K-th largest count
  is relevant, and the denominator is min(K, relevant)); precision of "rising" calls.
- User level (PARE/PREP protocol): one non-personalised ranking scores each user's next-bucket
  interactions with Recall@K, NDCG@K (binary gain) and HR@K.
"""

from __future__ import annotations

import numpy as np

# An item the ranking does not contain (not active at the origin) never reaches any top-K.
UNRANKED = np.iinfo(np.int64).max


def absolute_errors(forecast: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(forecast, dtype=np.float64) - np.asarray(truth, dtype=np.float64))


def squared_log_errors(forecast: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(log1p(forecast) - log1p(truth))^2; forecasts below 0 count as 0."""
    forecast = np.maximum(np.asarray(forecast, dtype=np.float64), 0.0)
    return (np.log1p(forecast) - np.log1p(np.asarray(truth, dtype=np.float64))) ** 2


def mae(forecast: np.ndarray, truth: np.ndarray) -> float:
    return float(absolute_errors(forecast, truth).mean()) if len(truth) else float("nan")


def rmsle(forecast: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(squared_log_errors(forecast, truth).mean())) if len(truth) else float("nan")


def ranking_order(forecast: np.ndarray) -> np.ndarray:
    """Row indices by forecast, highest first; ties keep row order (forecasts rounded as the stream does)."""
    return np.argsort(-np.round(np.asarray(forecast, dtype=np.float64), 6), kind="stable")


def ranks(forecast: np.ndarray) -> np.ndarray:
    """Rank of every row (0 = top) in `ranking_order`."""
    order = ranking_order(forecast)
    out = np.empty(len(order), dtype=np.int64)
    out[order] = np.arange(len(order))
    return out


def discounts(k: int) -> np.ndarray:
    """1 / log2(rank + 2) for ranks 0..k-1."""
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def item_ndcg_at_k(forecast: np.ndarray, truth: np.ndarray, k: int) -> float:
    """NDCG@k of the forecast ranking, gain = true count; NaN when no item has a positive count."""
    truth = np.asarray(truth, dtype=np.float64)
    top = ranking_order(forecast)[:k]
    ideal = np.sort(truth)[::-1][:k]
    idcg = float(ideal @ discounts(len(ideal)))
    if idcg <= 0:
        return float("nan")
    return float(truth[top] @ discounts(len(top))) / idcg


def item_recall_at_k(forecast: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of the true top-k (tie-aware, positive counts only) found in the forecast's top-k."""
    truth = np.asarray(truth, dtype=np.float64)
    positive = truth > 0
    if not positive.any():
        return float("nan")
    kth_largest = np.sort(truth)[::-1][min(k, len(truth)) - 1]
    relevant = positive & (truth >= kth_largest)
    hits = int(relevant[ranking_order(forecast)[:k]].sum())
    return hits / min(k, int(relevant.sum()))


def rising_mask(forecast: np.ndarray, last_count: np.ndarray, tolerance: float = 0.05) -> np.ndarray:
    """Vectorised `models.scoring.direction_of(...) == "rising"`: above last * (1 + tol) by >= 0.5."""
    forecast = np.asarray(forecast, dtype=np.float64)
    last_count = np.asarray(last_count, dtype=np.float64)
    return (forecast > last_count * (1 + tolerance)) & (forecast - last_count >= 0.5)


def rising_calls(forecast: np.ndarray, truth: np.ndarray, last_count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(called, correct): rows the forecast calls rising, and those where the truth rose too."""
    called = rising_mask(forecast, last_count)
    return called, called & rising_mask(truth, last_count)


def user_metrics_at_k(user_index: np.ndarray, item_rank: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-user Recall@k, NDCG@k and HR@k of one ranking.

    `user_index[j]`, `item_rank[j]` is one distinct (user, item) interaction in the target bucket and
    the item's rank in the ranking (UNRANKED if absent). Returns arrays over the users present, in
    increasing user index.
    """
    users, user_row = np.unique(np.asarray(user_index, dtype=np.int64), return_inverse=True)
    item_rank = np.asarray(item_rank, dtype=np.int64)
    hit = item_rank < k
    n_truth = np.bincount(user_row, minlength=len(users))
    n_hits = np.bincount(user_row, weights=hit, minlength=len(users))
    gains = np.where(hit, 1.0 / np.log2(np.minimum(item_rank, k) + 2.0), 0.0)
    dcg = np.bincount(user_row, weights=gains, minlength=len(users))
    ideal_dcg = np.concatenate([[0.0], np.cumsum(discounts(k))])[np.minimum(n_truth, k)]
    return {
        "recall": n_hits / n_truth,
        "ndcg": dcg / ideal_dcg,
        "hr": (n_hits > 0).astype(np.float64),
    }


def bootstrap_ratio_ci(
    numerator: np.ndarray, denominator: np.ndarray, n_boot: int, seed: int, level: float = 0.95,
    chunk: int = 200,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerator) / sum(denominator), resampling rows.

    The same seed draws the same resamples for the same row count, so methods compared on the same
    rows get paired intervals. NaN bounds when there are no rows.
    """
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    n = len(numerator)
    if n == 0 or n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_boot, chunk):  # chunks bound memory at chunk * n indices
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append(numerator[idx].sum(axis=1) / denominator[idx].sum(axis=1))
    stats = np.concatenate(stats)
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def bootstrap_mean_ci(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (NaN rows dropped first)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return bootstrap_ratio_ci(values, np.ones_like(values), n_boot, seed, level)
