"""Per-item trend features at a scoring boundary, shared by the stream's scorer and the backtest.

Input is the bucket-count matrix of `models.windows` (items x n_buckets, oldest first) plus each
item's last event slot; output is a `FeatureBatch` with the derived trend signals. Vectorised with
numpy: nothing here loops over events or items in Python. No Kafka, no model code here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.windows import WindowSpec

# The signals an explanation may cite (trend v1 `signals`), in a fixed order.
SIGNAL_NAMES = (
    "last_count",        # count in the most recent bucket (ends at the boundary)
    "prev_count",        # count in the bucket before it
    "velocity",          # last_count - prev_count
    "acceleration",      # velocity - previous velocity
    "growth_pct",        # 100 * velocity / max(prev_count, 1)
    "mean_count",        # mean count over the window's buckets
    "recency_slots",     # slots since the item's last event before the boundary (window_slots if none)
)


@dataclass
class FeatureBatch:
    """Features of many items at one boundary. Row i of every array belongs to `item_ids[i]`."""

    item_ids: list[str]
    bucket_counts: np.ndarray            # int64 [n, n_buckets], oldest first
    last_event_slot: np.ndarray          # int64 [n], -1 if no event in the window
    boundary_slot: int
    spec: WindowSpec
    texts: list[str] = field(default_factory=list)   # item title/text, "" when unknown
    signals: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.bucket_counts = np.asarray(self.bucket_counts, dtype=np.int64).reshape(-1, self.spec.n_buckets)
        if len(self.item_ids) != len(self.bucket_counts):
            raise ValueError(f"{len(self.item_ids)} item ids for {len(self.bucket_counts)} count rows")
        if not self.texts:
            self.texts = [""] * len(self.item_ids)
        self.signals = trend_signals(self.bucket_counts, self.last_event_slot, self.boundary_slot, self.spec)

    def __len__(self) -> int:
        return len(self.item_ids)

    def subset(self, index: np.ndarray) -> FeatureBatch:
        index = np.asarray(index, dtype=np.int64)
        return FeatureBatch(
            item_ids=[self.item_ids[i] for i in index],
            bucket_counts=self.bucket_counts[index],
            last_event_slot=np.asarray(self.last_event_slot)[index],
            boundary_slot=self.boundary_slot,
            spec=self.spec,
            texts=[self.texts[i] for i in index],
        )

    def signals_of(self, i: int) -> dict[str, float]:
        """The signals of row i as plain floats (rounded to 4 decimals, as published in trend v1)."""
        return {name: round(float(self.signals[name][i]), 4) for name in SIGNAL_NAMES}


def trend_signals(
    bucket_counts: np.ndarray, last_event_slot: np.ndarray, boundary_slot: int, spec: WindowSpec
) -> dict[str, np.ndarray]:
    """The named trend signals (float64 arrays) of a bucket-count matrix."""
    counts = np.asarray(bucket_counts, dtype=np.float64)
    n_buckets = counts.shape[1]
    last = counts[:, -1]
    prev = counts[:, -2] if n_buckets >= 2 else np.zeros_like(last)
    prev2 = counts[:, -3] if n_buckets >= 3 else np.zeros_like(last)
    velocity = last - prev
    acceleration = velocity - (prev - prev2)
    last_event_slot = np.asarray(last_event_slot, dtype=np.int64)
    recency = np.where(last_event_slot >= 0, boundary_slot - 1 - last_event_slot, spec.window_slots)
    return {
        "last_count": last,
        "prev_count": prev,
        "velocity": velocity,
        "acceleration": acceleration,
        "growth_pct": 100.0 * velocity / np.maximum(prev, 1.0),
        "mean_count": counts.mean(axis=1),
        "recency_slots": recency.astype(np.float64),
    }


def feature_names(spec: WindowSpec) -> list[str]:
    """Column names of `feature_matrix`: log1p bucket counts (oldest first), then SIGNAL_NAMES."""
    return [f"log1p_count_{k - spec.n_buckets}" for k in range(spec.n_buckets)] + list(SIGNAL_NAMES)


def feature_matrix(batch: FeatureBatch) -> np.ndarray:
    """The batch as a float64 model-input matrix [n, n_buckets + len(SIGNAL_NAMES)] (see feature_names)."""
    if not len(batch):
        return np.zeros((0, len(feature_names(batch.spec))))
    counts = np.log1p(batch.bucket_counts.astype(np.float64))
    signals = np.column_stack([batch.signals[name] for name in SIGNAL_NAMES])
    return np.hstack([counts, signals])


def numeric_features(bucket_counts: np.ndarray, signals: dict[str, np.ndarray], window_slots: int) -> np.ndarray:
    """Model inputs per item, float32 [n, n_buckets + 8]: log1p counts (oldest first) and scaled signals.

    Signed signals use sign(x) * log1p(|x|); growth_pct is taken as a fraction; recency as a share of the
    window. Everything stays O(1) in size so the prefix MLP sees well-scaled inputs.
    """
    def slog(x: np.ndarray) -> np.ndarray:
        return np.sign(x) * np.log1p(np.abs(x))

    counts = np.log1p(np.asarray(bucket_counts, dtype=np.float64))
    s = {name: np.asarray(signals[name], dtype=np.float64) for name in SIGNAL_NAMES}
    extra = np.column_stack([
        np.log1p(s["last_count"]), np.log1p(s["prev_count"]), slog(s["velocity"]), slog(s["acceleration"]),
        slog(s["growth_pct"] / 100.0), np.log1p(s["mean_count"]), s["recency_slots"] / max(window_slots, 1),
        (s["last_count"] > 0).astype(np.float64),
    ])
    return np.hstack([counts, extra]).astype(np.float32)
