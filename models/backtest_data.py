"""What a log holds at a slot boundary: the features of its active items, their true next-bucket counts, and
the backtest origins; the training and evaluation data of every learner (backtest, baselines, TRAIL trainer).

Vectorised: events are aggregated once per log into (item, slot, count) rows with numpy (cached per log and
slot size); window math is `models.windows`, the features `models.features`, the same functions the stream
calls. `feature_batch_at` reads only slots before the boundary. No scoring and no metrics here.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.datasets import EventLog
from models.features import FeatureBatch
from models.windows import WindowSpec, bucket_count_matrix, last_event_slot_matrix

# One origin per slot over the last 50 slots: on ml-100k (1-day slots, 7-day buckets) the span of the
# former 8 weekly origins, 1998-02-26 ... 1998-04-16, so a model's training cutoff stays where it was.
DEFAULT_ORIGINS = 50


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


def backtest_origins(log: EventLog, spec: WindowSpec, n_origins: int = DEFAULT_ORIGINS) -> list[int]:
    """The last `n_origins` origins (slot indices), one slot apart, each with a complete target bucket.

    The last origin's target bucket ends at the end of the log's last slot; the first origin must have
    a full window of history after the log's first slot. Neighbouring origins share all but one slot of
    their target bucket (the metrics' intervals and tests account for that overlap).
    """
    if n_origins <= 0:
        raise ValueError(f"n_origins must be positive, got {n_origins}")
    if not len(log):
        raise ValueError(f"dataset {log.name!r} has no events")
    first_slot = int(spec.slot_of(int(log.ts_ms[0])))
    end_slot = int(spec.slot_of(int(log.ts_ms[-1]))) + 1
    last_origin = end_slot - spec.slots_per_bucket
    origins = list(range(last_origin - n_origins + 1, last_origin + 1))
    if origins[0] - spec.window_slots < first_slot:
        most = last_origin - spec.window_slots - first_slot + 1
        raise ValueError(
            f"dataset {log.name!r} is too short for {n_origins} origins with a {spec.n_buckets}-bucket window "
            f"of {spec.bucket_s} s buckets: at most {max(most, 0)} origins fit; ask for fewer or a shorter window"
        )
    return origins
