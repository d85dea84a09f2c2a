"""Event-time window arithmetic shared by the stream and the backtest (pure; no Kafka, no RocksDB here).

Time is cut into slots of `slot_s` seconds (the counting grain); a bucket is `slots_per_bucket`
consecutive slots (the forecasting period). At a scoring boundary `boundary_slot` (an absolute slot
index: the boundary is the start of that slot) the window holds `n_buckets` buckets ending at the
boundary, oldest first: bucket k covers slots
``[boundary - (n_buckets - k) * spb, boundary - (n_buckets - k - 1) * spb)``.
Buckets slide with the slots, so a forecast can be made at every slot step. The forecast target at a
boundary is the count in ``[boundary, boundary + spb)``.

Per item, the stream keeps its slot counts as a sparse ring: sorted absolute slot indices with their
counts, trimmed to the slots a future boundary can still read. The backtest builds the same counts with
numpy from the raw events; both call `bucket_count_matrix`, so they agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MS_PER_S = 1000


@dataclass(frozen=True)
class WindowSpec:
    """Window geometry. Every duration carries its unit in its name."""

    slot_s: int = 86_400
    bucket_s: int = 7 * 86_400
    n_buckets: int = 8
    allowed_lateness_s: int = 86_400

    def __post_init__(self) -> None:
        if self.slot_s <= 0 or self.bucket_s <= 0 or self.n_buckets <= 0:
            raise ValueError(f"slot_s, bucket_s and n_buckets must be positive, got {self}")
        if self.bucket_s % self.slot_s:
            raise ValueError(f"bucket_s ({self.bucket_s}) must be a multiple of slot_s ({self.slot_s})")
        if self.allowed_lateness_s < 0:
            raise ValueError(f"allowed_lateness_s must be >= 0, got {self.allowed_lateness_s}")

    @property
    def slots_per_bucket(self) -> int:
        return self.bucket_s // self.slot_s

    @property
    def window_slots(self) -> int:
        """Slots a boundary reads: n_buckets whole buckets."""
        return self.n_buckets * self.slots_per_bucket

    @property
    def slot_ms(self) -> int:
        return self.slot_s * MS_PER_S

    def slot_of(self, ts_ms: int) -> int:
        """Absolute slot index of an event time in epoch ms."""
        return ts_ms // self.slot_ms

    def slots_of(self, ts_ms: np.ndarray) -> np.ndarray:
        return np.floor_divide(np.asarray(ts_ms, dtype=np.int64), self.slot_ms)

    def boundary_ms(self, boundary_slot: int) -> int:
        return boundary_slot * self.slot_ms

    def watermark_slot(self, max_ts_ms: int) -> int:
        """The last slot boundary the watermark (max event time - allowed lateness) has crossed.

        Boundary b is complete when watermark >= b * slot_ms, i.e. every slot < b is closed.
        """
        return (max_ts_ms - self.allowed_lateness_s * MS_PER_S) // self.slot_ms


def bucket_count_matrix(
    item_index: np.ndarray,
    slots: np.ndarray,
    counts: np.ndarray,
    boundary_slot: int,
    spec: WindowSpec,
    n_items: int,
) -> np.ndarray:
    """Bucket counts of many items at once: int64 matrix [n_items, n_buckets], oldest bucket first.

    `item_index[i]`, `slots[i]`, `counts[i]` describe one (item, slot) count; rows outside the window
    (before its first bucket, at or after the boundary) are ignored, so this never reads the future.
    """
    slots = np.asarray(slots, dtype=np.int64)
    start = boundary_slot - spec.window_slots
    inside = (slots >= start) & (slots < boundary_slot)
    bucket = (slots[inside] - start) // spec.slots_per_bucket
    flat = np.asarray(item_index, dtype=np.int64)[inside] * spec.n_buckets + bucket
    out = np.bincount(flat, weights=np.asarray(counts, dtype=np.float64)[inside],
                      minlength=n_items * spec.n_buckets)
    return out.reshape(n_items, spec.n_buckets).round().astype(np.int64)


def last_event_slot_matrix(
    item_index: np.ndarray, slots: np.ndarray, boundary_slot: int, n_items: int
) -> np.ndarray:
    """Per item, the latest slot < boundary that holds an event; -1 where none (int64 [n_items])."""
    slots = np.asarray(slots, dtype=np.int64)
    before = slots < boundary_slot
    out = np.full(n_items, -1, dtype=np.int64)
    np.maximum.at(out, np.asarray(item_index, dtype=np.int64)[before], slots[before])
    return out


# --- the per-item sparse ring kept in the stream's RocksDB table -----------------------------------------

RING_DTYPE = np.dtype([("slot", "<i8"), ("count", "<u4")])


def decode_ring(value: bytes | None) -> np.ndarray:
    """A stored ring value -> structured array of (slot, count), sorted by slot."""
    if not value:
        return np.zeros(0, dtype=RING_DTYPE)
    return np.frombuffer(value, dtype=RING_DTYPE)


def encode_ring(ring: np.ndarray) -> bytes:
    return np.ascontiguousarray(ring, dtype=RING_DTYPE).tobytes()
