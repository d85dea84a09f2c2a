"""Forecast and ranking metrics of the backtest (PRODUCT.md "Evaluation protocol"), and bootstrap intervals.

Pure numpy on arrays of one origin (or of pooled origins); no data loading, no scorers here.
Rankings order items by forecast rounded to 6 decimals, highest first; ties keep the input order
(the backtest's rows are sorted by item id), as the stream's top-K does, so every metric is deterministic.

- Item level: MAE and RMSLE of counts; NDCG@K with the true next-bucket count as the (linear) gain;
  Recall@K against the true top-K (tie-aware: every item whose count reaches the K-th largest count
  is relevant, and the denominator is min(K, relevant)); precision of "rising" calls.
- User level (PARE/PREP protocol): one non-personalised ranking scores each user's next-bucket
  interactions with Recall@K, NDCG@K (binary gain) and HR@K.
- Over origins: every pooled metric as per-origin sums (`OriginSums`), circular-block-bootstrap
  intervals over origins, and the paired difference of two methods with a Diebold-Mariano-style
  p-value (`paired_difference`); row-level bootstrap helpers remain for independent rows.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    return percentile_interval(np.concatenate(stats), level)


def bootstrap_mean_ci(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (NaN rows dropped first)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return bootstrap_ratio_ci(values, np.ones_like(values), n_boot, seed, level)


# --- per-origin series: block-bootstrap intervals and paired tests over overlapping origins ----------------
#
# With an origin every slot and a target bucket of several slots, neighbouring origins share most of their
# target bucket, so their errors are correlated. Rows of one origin are not independent of the next one's
# either. Intervals therefore resample whole origins in blocks (circular block bootstrap, Politis & Romano
# 1992) and the test's variance is a long-run (HAC) variance (Diebold & Mariano 1995; small-sample
# correction of Harvey, Leybourne & Newbold 1997), both with the overlap as their reach.


def circular_block_indices(n_origins: int, block_length: int, n_boot: int, seed: int) -> np.ndarray:
    """Origin indices of `n_boot` circular-block-bootstrap resamples, int64 [n_boot, n_origins].

    Each resample strings together blocks of `block_length` consecutive origins (wrapping past the last
    one) from uniform starting points, cut to `n_origins`. Rows are sorted, so a resample that happens to
    hold every origin once sums them in the original order (same floats as the point estimate).
    """
    if n_origins <= 0 or n_boot <= 0:
        return np.zeros((max(n_boot, 0), 0), dtype=np.int64)
    block_length = max(1, min(block_length, n_origins))
    n_blocks = -(-n_origins // block_length)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_origins, size=(n_boot, n_blocks, 1))
    idx = (starts + np.arange(block_length)) % n_origins
    return np.sort(idx.reshape(n_boot, -1)[:, :n_origins], axis=1)


def pooled_ratio(numerator: np.ndarray, denominator: np.ndarray, root: bool = False) -> float:
    """sum(numerator) / sum(denominator) (square-rooted for RMSLE); NaN when the denominator sums to 0."""
    den = float(np.sum(denominator))
    if den <= 0:
        return float("nan")
    value = float(np.sum(numerator)) / den
    return float(np.sqrt(value)) if root else value


def resampled_ratios(numerator: np.ndarray, denominator: np.ndarray, idx: np.ndarray, root: bool = False) -> np.ndarray:
    """`pooled_ratio` of every resample (rows of `idx`); NaN where a resample's denominator sums to 0."""
    num = np.asarray(numerator, dtype=np.float64)[idx].sum(axis=1)
    den = np.asarray(denominator, dtype=np.float64)[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(den > 0, num / den, np.nan)
    return np.sqrt(ratio) if root else ratio


def percentile_interval(stats: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of the finite `stats` (NaN bounds when there are none)."""
    stats = np.asarray(stats, dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def long_run_variance(series: np.ndarray, lag: int) -> float:
    """Long-run variance of a mean-zero-able series: autocovariances up to `lag`, equal weights (as DM 1995
    do for an h-step forecast, lag = h - 1); Bartlett (Newey-West) weights instead if that is not positive."""
    x = np.asarray(series, dtype=np.float64)
    x = x - x.mean()
    n = len(x)
    lag = max(0, min(lag, n - 1))
    gamma = np.array([x[k:] @ x[:n - k] / n for k in range(lag + 1)])
    rectangular = gamma[0] + 2 * gamma[1:].sum()
    if rectangular > 0:
        return float(rectangular)
    bartlett = 1 - np.arange(1, lag + 1) / (lag + 1)
    return float(gamma[0] + 2 * (bartlett * gamma[1:]).sum())


def diebold_mariano_p_value(difference: float, influence: np.ndarray, horizon: int) -> float:
    """Two-sided p-value of "the expected difference is 0" from a per-origin series.

    `influence[t]` is origin t's contribution to the estimated `difference` (for a plain mean of
    per-origin loss differentials, d_t - mean d). The statistic is difference / sqrt(LRV / T) with the
    long-run variance over lags < `horizon` (origins less than `horizon` apart share target slots),
    scaled by the Harvey-Leybourne-Newbold factor and read against Student's t with T - 1 df.
    NaN when there are fewer than 3 origins; 1 for a difference of exactly 0 at every origin.
    """
    from scipy.stats import t as student_t  # scipy comes with scikit-learn

    n = len(influence)
    if n < 3 or not np.isfinite(difference):
        return float("nan")
    variance = long_run_variance(influence, horizon - 1) / n
    if not variance > 0:   # every origin contributes the same: no difference at all, or a certain one
        return 1.0 if difference == 0 else 0.0
    h = max(1, min(horizon, n))
    correction = np.sqrt(max((n + 1 - 2 * h + h * (h - 1) / n) / n, 1e-12))
    statistic = correction * difference / np.sqrt(variance)
    return float(2 * student_t.sf(abs(statistic), df=n - 1))


def ratio_influence(numerator: np.ndarray, denominator: np.ndarray, root: bool = False) -> np.ndarray:
    """Per-origin influence (delta method) on `pooled_ratio`: its linearisation around the pooled value."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    ratio = pooled_ratio(num, den)
    mean_den = den.mean()
    if not np.isfinite(ratio) or mean_den <= 0:
        return np.full(len(num), np.nan)
    influence = (num - ratio * den) / mean_den
    if root:  # d sqrt(r) = dr / (2 sqrt(r))
        influence = influence / (2 * np.sqrt(ratio)) if ratio > 0 else np.zeros_like(influence)
    return influence


@dataclass(frozen=True)
class OriginSums:
    """A metric pooled over origins as sum(numerator) / sum(denominator), one entry per origin.

    MAE: absolute errors and item rows per origin; RMSLE: squared log errors and rows (`root`); item
    NDCG/Recall: the origin's value and 1 (0 and 0 when it is undefined); rising precision: correct and
    called rising calls; user metrics: the sum over the origin's users and their number.
    """

    numerator: np.ndarray    # float64 [n_origins]
    denominator: np.ndarray  # float64 [n_origins]
    root: bool = False

    @property
    def value(self) -> float:
        return pooled_ratio(self.numerator, self.denominator, self.root)

    def interval(self, idx: np.ndarray, level: float = 0.95) -> tuple[float, float]:
        """Block-bootstrap percentile interval over the origin resamples `idx`."""
        return percentile_interval(resampled_ratios(self.numerator, self.denominator, idx, self.root), level)


def paired_difference(method: OriginSums, reference: OriginSums, idx: np.ndarray, horizon: int,
                      level: float = 0.95) -> dict:
    """method - reference on the same origins: the difference, its block-bootstrap interval (the same
    resamples `idx` for both sides) and the Diebold-Mariano-style p-value with overlap `horizon`."""
    difference = method.value - reference.value
    if not np.isfinite(difference):
        return {"diff": float("nan"), "diff_ci": [float("nan"), float("nan")], "p_value": float("nan")}
    resampled = (resampled_ratios(method.numerator, method.denominator, idx, method.root)
                 - resampled_ratios(reference.numerator, reference.denominator, idx, reference.root))
    influence = (ratio_influence(method.numerator, method.denominator, method.root)
                 - ratio_influence(reference.numerator, reference.denominator, reference.root))
    return {
        "diff": float(difference),
        "diff_ci": list(percentile_interval(resampled, level)),
        "p_value": diebold_mariano_p_value(difference, influence, horizon),
    }
