"""The baselines TRAIL must beat, each behind the `Scorer` interface (PRODUCT.md "Evaluation protocol").

Every baseline forecasts the next-bucket count of each item of a `FeatureBatch` from its window
features; explanations are the shared template. All-time MostPop and the gradient-boosted regressor
learn through the optional fit hook (`models.scoring.FittableScorer`), from the history before the
origin only. No data loading or metrics here.

References: recent popularity — Ji, Sun, Zhang, Li. A Re-visit of the Popularity Baseline in
Recommender Systems. SIGIR 2020 (popularity over the most recent period beats all-time popularity).
Velocity + acceleration — the TrendRec-style `models.scoring.VelocityScorer`. Reddit-style decay —
the "hot" rank log10(votes) + time / tau, with an item's last event as its time.
"""

from __future__ import annotations

import numpy as np

from models.backtest_data import feature_batch_at, targets_at
from models.datasets import EventLog
from models.features import FeatureBatch, feature_matrix, feature_names
from models.scoring import Scorer, VelocityScorer, template_explanation
from models.windows import WindowSpec


class TemplateExplained:
    """Mixin: the shared template explanation, so every baseline can be explained the same way."""

    name: str
    version = "1"
    sha256 = ""

    def explain(self, batch: FeatureBatch, forecast: np.ndarray, index: np.ndarray) -> list[str]:
        return [template_explanation(batch.signals_of(i), float(forecast[i]), batch.spec.bucket_s, batch.texts[i])
                for i in index]


class MostPopScorer(TemplateExplained):
    """All-time MostPop: an item's count over the whole history, as an average per bucket."""

    name = "mostpop-alltime"

    def __init__(self) -> None:
        self.item_vocab = np.zeros(0, dtype=str)
        self.per_bucket = np.zeros(0)

    def fit(self, history: EventLog, spec: WindowSpec, boundary_slot: int) -> None:
        history = history.before(spec.boundary_ms(boundary_slot))  # defence in depth: never count the future
        if not len(history):
            self.item_vocab, self.per_bucket = np.zeros(0, dtype=str), np.zeros(0)
            return
        first_slot = spec.slot_of(int(history.ts_ms[0]))
        # a per-bucket rate keeps the forecast on the count scale; the ranking is the all-time count's
        buckets_seen = max((boundary_slot - first_slot) / spec.slots_per_bucket, 1.0)
        self.item_vocab = history.item_vocab
        self.per_bucket = np.bincount(history.item_code, minlength=len(history.item_vocab)) / buckets_seen

    def forecast(self, batch: FeatureBatch) -> np.ndarray:
        ids = np.asarray(batch.item_ids, dtype=str)
        if not len(self.item_vocab) or not len(ids):
            return np.zeros(len(ids))
        pos = np.minimum(np.searchsorted(self.item_vocab, ids), len(self.item_vocab) - 1)
        return np.where(self.item_vocab[pos] == ids, self.per_bucket[pos], 0.0)


class RecentPopScorer(TemplateExplained):
    """Recent popularity (Ji et al., SIGIR 2020): next bucket = the last bucket."""

    name = "recent-pop"

    def forecast(self, batch: FeatureBatch) -> np.ndarray:
        return batch.signals["last_count"].astype(np.float64)


class EMAScorer(TemplateExplained):
    """Exponential moving average of the window's bucket counts (oldest bucket seeds the average)."""

    name = "ema"

    def __init__(self, alpha: float = 0.5) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"EMA alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha

    def forecast(self, batch: FeatureBatch) -> np.ndarray:
        n_buckets = batch.spec.n_buckets
        age = np.arange(n_buckets - 1, -1, -1)          # buckets back from the newest
        weights = self.alpha * (1 - self.alpha) ** age
        weights[0] = (1 - self.alpha) ** (n_buckets - 1)  # s_0 = c_0, then s_t = a c_t + (1 - a) s_{t-1}
        return batch.bucket_counts.astype(np.float64) @ weights


class LinearTrendScorer(TemplateExplained):
    """Least-squares line through the window's bucket counts, extrapolated one bucket, clipped at 0."""

    name = "linear-trend"

    def forecast(self, batch: FeatureBatch) -> np.ndarray:
        counts = batch.bucket_counts.astype(np.float64)
        x = np.arange(counts.shape[1], dtype=np.float64)
        x_centred = x - x.mean()
        slope = counts @ x_centred / max(float(x_centred @ x_centred), 1e-12)
        return np.maximum(0.0, counts.mean(axis=1) + slope * (counts.shape[1] - x.mean()))


class RedditDecayScorer(TemplateExplained):
    """Reddit-style hot: log10(window count) - age / tau, age = time since the item's last event.

    As a count: the window's mean bucket count times 10^(-age / tau); tau defaults to one bucket, so an
    item silent for a whole bucket needs ten times the interactions to rank level.
    """

    name = "reddit-decay"

    def __init__(self, tau_s: int | None = None) -> None:
        self.tau_s = tau_s

    def forecast(self, batch: FeatureBatch) -> np.ndarray:
        tau_s = self.tau_s or batch.spec.bucket_s
        age_s = batch.signals["recency_slots"] * batch.spec.slot_s
        return batch.signals["mean_count"] * 10.0 ** (-age_s / tau_s)


def one_openmp_thread():
    """Run sklearn's OpenMP code on one thread: on a shared 2-core machine two spinning OpenMP threads
    made the gradient-boosted fits 7x slower (measured: 51 s vs 7 s); alone, two threads gain ~20 %."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    return threadpool_limits(limits=1, user_api="openmp")


class GradientBoostingScorer(TemplateExplained):
    """HistGradientBoostingRegressor (Poisson loss, fixed seed) on `feature_matrix`, refitted once per bucket.

    Training pairs: features at every `stride_slots`-th boundary of the history and their next-bucket
    counts, for boundaries whose target bucket ends at or before the fit slot (no leakage), starting one
    bucket after the history's first slot. The default stride is half a bucket: neighbouring boundaries
    share most of their window, so denser ones cost fit time (measured: 3x) and add little.

    Refits: the model used at an origin is fitted at the fit slot, the origin rounded down to a multiple of
    `refit_slots` (default one bucket: a weekly retrain on ml-100k). The fit slot depends on the origin
    only, so forecasts do not depend on which origins came before; with origins every slot a refit per
    origin would cost ~1.4 s each (measured), 7x the weekly cost, for models that differ by a day of data.
    """

    name = "gbr"

    def __init__(self, stride_slots: int | None = None, max_iter: int = 100, seed: int = 0,
                 refit_slots: int | None = None) -> None:
        self.stride_slots = stride_slots
        self.max_iter = max_iter
        self.seed = seed
        self.refit_slots = refit_slots
        self.fitted_key: tuple[str, int, int] | None = None
        self.model = None
        self.constant: float | None = None   # the forecast when every training target was 0

    def fit_slot(self, spec: WindowSpec, boundary_slot: int) -> int:
        """The slot the model for `boundary_slot` is fitted at (<= boundary_slot)."""
        refit_slots = self.refit_slots or spec.slots_per_bucket
        return boundary_slot - boundary_slot % refit_slots

    def training_pairs(self, history: EventLog, spec: WindowSpec, boundary_slot: int) -> tuple[np.ndarray, np.ndarray]:
        """(features, targets) at the training boundaries of `history` before `boundary_slot`."""
        spb = spec.slots_per_bucket
        stride_slots = self.stride_slots or max(1, spb // 2)
        first = spec.slot_of(int(history.ts_ms[0])) + spb if len(history) else boundary_slot
        features, targets = [], []
        for train_slot in range(first, boundary_slot - spb + 1, stride_slots):
            batch = feature_batch_at(history, spec, train_slot)
            features.append(feature_matrix(batch))
            targets.append(targets_at(history, spec, train_slot, batch.item_ids))
        if not features:
            return np.zeros((0, len(feature_names(spec)))), np.zeros(0)
        return np.vstack(features), np.concatenate(targets).astype(np.float64)

    def fit(self, history: EventLog, spec: WindowSpec, boundary_slot: int) -> None:
        """Fit on `history` before the fit slot of `boundary_slot`; a no-op when that model is already fitted."""
        fit_slot = self.fit_slot(spec, boundary_slot)
        history = history.before(spec.boundary_ms(fit_slot))
        key = (history.name, fit_slot, len(history))  # the same slot of another log refits
        if key == self.fitted_key:
            return
        self.fit_at(history, spec, fit_slot)
        self.fitted_key = key

    def fit_at(self, history: EventLog, spec: WindowSpec, fit_slot: int) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        features, targets = self.training_pairs(history, spec, fit_slot)
        if len(targets) == 0:
            raise ValueError(
                f"gbr: no training boundary before slot {fit_slot}; the history needs at least two "
                f"buckets of {spec.bucket_s} s before the first origin"
            )
        if not targets.any():  # Poisson needs a positive total; the best fit to all-zero targets is 0
            self.model, self.constant = None, 0.0
            return
        # no early stopping: its random validation split would make the fit depend on more than the seed
        model = HistGradientBoostingRegressor(
            loss="poisson", max_iter=self.max_iter, early_stopping=False, random_state=self.seed
        )
        with one_openmp_thread():
            self.model = model.fit(features, targets)
        self.constant = None

    def forecast(self, batch: FeatureBatch) -> np.ndarray:
        if self.model is None and self.constant is None:
            raise RuntimeError("gbr: call fit() before forecast()")
        if self.model is None or not len(batch):
            return np.full(len(batch), self.constant or 0.0)
        with one_openmp_thread():
            return np.maximum(0.0, self.model.predict(feature_matrix(batch)))


def default_baselines(seed: int = 0) -> list[Scorer]:
    """Every baseline of the evaluation protocol, in report order."""
    return [
        MostPopScorer(),
        RecentPopScorer(),
        EMAScorer(),
        LinearTrendScorer(),
        VelocityScorer(),
        RedditDecayScorer(),
        GradientBoostingScorer(seed=seed),
    ]
