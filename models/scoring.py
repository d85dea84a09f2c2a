"""The `Scorer` interface every forecaster implements (baselines, TRAIL in torch, TRAIL in ONNX Runtime),
and the default stream scorer: velocity + acceleration with a template explanation.

A scorer turns a `FeatureBatch` into next-bucket count forecasts and, for the items it is asked about,
one-or-two-sentence explanations citing only numbers from the batch's signals. Ranking is by forecast.
No Kafka here.

Optional fit hook (`FittableScorer`): a scorer that learns from history also defines
``fit(history, spec, boundary_slot)``. The backtest calls it once per origin, before `forecast`, with an
`EventLog` holding only the events before that origin (so learning cannot leak the future); a scorer
builds its training pairs from it with `models.backtest_data.feature_batch_at` / `targets_at`, using only
boundaries whose target bucket ends at or before `boundary_slot`. Scorers without `fit` are used as
they are; the stream never calls `fit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from models.features import FeatureBatch
from models.wording import (
    change_words,
    direction_of,
    fmt_count,
    fmt_pct,
    fmt_real,
    item_descriptor,
    period_word,
    trend_phrase,
)

__all__ = ["FittableScorer", "Scorer", "VelocityScorer", "direction_of", "template_explanation"]

if TYPE_CHECKING:  # typing only: the stream imports this module and never needs the dataset loaders
    from models.datasets import EventLog
    from models.windows import WindowSpec


@runtime_checkable
class Scorer(Protocol):
    name: str
    version: str
    sha256: str

    def forecast(self, batch: FeatureBatch) -> np.ndarray:
        """Forecast next-bucket counts (float64 [n], >= 0) from data before the boundary only."""
        ...

    def explain(self, batch: FeatureBatch, forecast: np.ndarray, index: np.ndarray) -> list[str]:
        """Explanations for rows `index` of the batch, consistent with `forecast`."""
        ...


@runtime_checkable
class FittableScorer(Scorer, Protocol):
    """A `Scorer` that learns from the history before each backtest origin (see the module docstring)."""

    def fit(self, history: EventLog, spec: WindowSpec, boundary_slot: int) -> None:
        """Learn from `history` (events before `boundary_slot` only); called before `forecast`."""
        ...


def template_explanation(signals: dict[str, float], forecast: float, bucket_s: int, item_text: str = "") -> str:
    """A grounded sentence from the signals: the trend phrase (forecast direction + recent shape), the last
    bucket against the one before, the forecast; the item's descriptor as subject when its text has one.
    Every part is a phrasing `models.faithfulness` binds, so it passes the checker by construction."""
    period = period_word(bucket_s)
    last, prev = signals["last_count"], signals["prev_count"]
    forecast = max(0.0, float(forecast))
    change = change_words(signals, period)
    if prev > 0 and last != prev:
        change += f", {fmt_pct(signals['growth_pct'])}"
    subject = (item_descriptor(item_text) if item_text else None) or "it"
    return (f"{trend_phrase(forecast, last, prev).capitalize()}: {subject} had {fmt_count(last)} interactions "
            f"in the last {period} ({change}); expected about {fmt_real(forecast)} next {period}.")


class VelocityScorer:
    """Baseline: next = last + velocity + acceleration / 2, clipped at 0 (TrendRec-style)."""

    name = "velocity-baseline"
    version = "1"
    sha256 = ""

    def forecast(self, batch: FeatureBatch) -> np.ndarray:
        s = batch.signals
        return np.maximum(0.0, s["last_count"] + s["velocity"] + 0.5 * s["acceleration"])

    def explain(self, batch: FeatureBatch, forecast: np.ndarray, index: np.ndarray) -> list[str]:
        return [template_explanation(batch.signals_of(i), float(forecast[i]), batch.spec.bucket_s, batch.texts[i])
                for i in index]
