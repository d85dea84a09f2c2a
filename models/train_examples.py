"""Training rows of TRAIL: which slot boundaries may train and validate, and the rows at each of them.

Rows are `FeatureBatch` rows at every slot boundary of the training range with their next-bucket counts
(`models.backtest_data.feature_batch_at` / `targets_at`). Only boundaries whose target bucket ends at or before
the first backtest origin are used (no leakage); the last `val_days` of them are held out for validation,
with a one-bucket gap so no training target overlaps a validation target. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from models.backtest_data import backtest_origins, feature_batch_at, targets_at
from models.features import SIGNAL_NAMES, numeric_features


@dataclass
class Examples:
    """Training rows: numeric features, signals, item text (as an index into `texts`) and the next count."""

    features: np.ndarray            # float32 [n, n_buckets + N_NUMERIC]
    signals: np.ndarray             # float64 [n, len(SIGNAL_NAMES)]
    text_index: np.ndarray          # int64 [n]
    targets: np.ndarray             # float64 [n] next-bucket counts
    boundary: np.ndarray            # int64 [n] boundary slot of the row
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def signals_of(self, i: int) -> dict[str, float]:
        return {name: round(float(v), 4) for name, v in zip(SIGNAL_NAMES, self.signals[i], strict=True)}

    def texts_of(self, rows: np.ndarray) -> list[str]:
        return [self.texts[j] for j in self.text_index[rows]]

    def subset(self, rows: np.ndarray) -> Examples:
        return Examples(self.features[rows], self.signals[rows], self.text_index[rows], self.targets[rows],
                        self.boundary[rows], self.texts)


def build_examples(log, spec, boundaries: range, on_boundary: Callable[[], None] | None = None) -> Examples:
    """Rows of every active item at every boundary, with their next-bucket counts."""
    text_ids: dict[str, int] = {}
    parts: dict[str, list] = {"features": [], "signals": [], "text_index": [], "targets": [], "boundary": []}
    for boundary_slot in boundaries:
        batch = feature_batch_at(log, spec, boundary_slot)
        parts["features"].append(numeric_features(batch.bucket_counts, batch.signals, spec.window_slots))
        parts["signals"].append(np.column_stack([batch.signals[n] for n in SIGNAL_NAMES]))
        parts["text_index"].append(np.array([text_ids.setdefault(t, len(text_ids)) for t in batch.texts],
                                            dtype=np.int64))
        parts["targets"].append(targets_at(log, spec, boundary_slot, batch.item_ids).astype(np.float64))
        parts["boundary"].append(np.full(len(batch), boundary_slot, dtype=np.int64))
        if on_boundary:
            on_boundary()
    if not parts["targets"]:
        raise ValueError(f"no training boundaries in {boundaries}; the log is too short for this window")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return Examples(**arrays, texts=list(text_ids))



def top_rows(data: Examples, per_boundary: int) -> np.ndarray:
    """Rows among the `per_boundary` highest next-bucket counts of their boundary (ties by row order), sorted:
    the count range a stream's top-K explanations see, which uniform sampling (mostly 0-3 counts) rarely hits."""
    order = np.lexsort((np.arange(len(data)), -data.targets, data.boundary))
    starts = np.flatnonzero(np.r_[True, data.boundary[order][1:] != data.boundary[order][:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return np.sort(order[rank < per_boundary])


def training_boundaries(log, spec, n_origins: int, val_days: int) -> tuple[int, range, range]:
    """(cutoff slot, train boundaries, validation boundaries): targets end at or before the cutoff."""
    cutoff = backtest_origins(log, spec, n_origins)[0]
    spb = spec.slots_per_bucket
    first = spec.slot_of(int(log.ts_ms[0])) + spb      # at least one bucket of history, like the gbr baseline
    last = cutoff - spb                                # target [b, b + spb) ends at the cutoff
    if val_days > 0:
        val = range(last - val_days + 1, last + 1)
        train = range(first, val.start - spb + 1)      # train targets end before the first val boundary
    else:
        val, train = range(0), range(first, last + 1)
    if len(train) == 0:
        raise ValueError(f"no training boundary before slot {cutoff}: use fewer --origins or --val-days")
    return cutoff, train, val

