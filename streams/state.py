"""Window state of one table partition (stage 2): item rings and the bookkeeping that makes counts exact.

Keys in the partition's RocksDB database (and its changelog):
- ``i:<item_id>``  -> the item's sparse ring of slot counts (`streams.windows` encoding);
- ``m:applied:<source partition>`` -> the last source offset whose deltas are in the rings, so
  re-delivered deltas (after a crash, before the offset commit) are skipped, not counted twice;
- ``m:wm:<source partition>`` -> that source's max event time, from which the watermark is derived;
- ``m:next`` -> the next scoring boundary slot (every boundary before it has been scored).
`PartitionState` computes what to write; the caller (`streams.app`) sends it to the changelog and the
store. The watermark is the minimum over all source partitions of their max event time, less the
allowed lateness, so it does not depend on how fast or in which interleaving a replay arrives.
No Kafka I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streams.deltas import DeltaColumns
from streams.heavy_hitters import HeavyHitters
from streams.windows import RING_DTYPE, WindowSpec, decode_ring

RING_PREFIX = b"i:"
APPLIED_PREFIX = b"m:applied:"
WATERMARK_PREFIX = b"m:wm:"
NEXT_BOUNDARY_KEY = b"m:next"


@dataclass
class StateUpdate:
    writes: dict[bytes, bytes] = field(default_factory=dict)
    applied_events: int = 0
    skipped_entries: int = 0       # re-delivered input, already counted
    late_events: int = 0           # counted, but their slot was already scored


@dataclass
class Snapshot:
    """All rings of a partition, flattened: row r of slots/counts belongs to item_ids[item_index[r]]."""

    item_ids: list[str]
    item_index: np.ndarray
    slots: np.ndarray
    counts: np.ndarray


class PartitionState:
    def __init__(self, partition: int, db, spec: WindowSpec, n_sources: int, max_candidates: int = 10_000) -> None:
        self.partition = partition
        self.db = db
        self.spec = spec
        self.n_sources = n_sources
        self.applied: dict[int, int] = {}
        self.source_max_ts_ms: dict[int, int] = {}
        self.next_boundary: int | None = None     # next boundary to snapshot (in memory, runs ahead)
        self.committed_next: int | None = None    # next boundary not yet scored and committed
        self.hitters = HeavyHitters(max_candidates)
        self._load_meta()
        self._seed_hitters()

    def _load_meta(self) -> None:
        for source in range(self.n_sources):
            applied = self.db.get(APPLIED_PREFIX + str(source).encode())
            if applied is not None:
                self.applied[source] = int(applied)
            watermark = self.db.get(WATERMARK_PREFIX + str(source).encode())
            if watermark is not None:
                self.source_max_ts_ms[source] = int(watermark)
        next_boundary = self.db.get(NEXT_BOUNDARY_KEY)
        self.next_boundary = int(next_boundary) if next_boundary is not None else None
        self.committed_next = self.next_boundary

    def _seed_hitters(self) -> None:
        """After a restart or rebalance, rebuild the candidate summary from the stored rings (one scan)."""
        for key, value in self.db.items(from_key=RING_PREFIX):
            if not key.startswith(RING_PREFIX):
                break
            if value:
                self.hitters.add([key[len(RING_PREFIX):].decode()], [int(decode_ring(value)["count"].sum())])

    # --- applying deltas -------------------------------------------------------------------------------

    def apply_deltas(self, source: int, watermark_ms: int, columns: DeltaColumns) -> StateUpdate:
        """Add one deltas message to the rings; returns the keys to write (in-memory meta is updated)."""
        update = StateUpdate()
        if watermark_ms > self.source_max_ts_ms.get(source, -1):
            self.source_max_ts_ms[source] = watermark_ms
            update.writes[WATERMARK_PREFIX + str(source).encode()] = str(watermark_ms).encode()
        if not columns.offsets:
            return update
        offsets = np.asarray(columns.offsets, dtype=np.int64)
        fresh = offsets > self.applied.get(source, -1)
        update.skipped_entries = int((~fresh).sum())
        if not fresh.any():
            return update
        items = np.asarray(columns.items, dtype=object)[fresh]
        slots = np.asarray(columns.slots, dtype=np.int64)[fresh]
        counts = np.asarray(columns.counts, dtype=np.int64)[fresh]
        if self.next_boundary is None:
            self.next_boundary = self.committed_next = int(slots.min()) + 1   # first boundary after the first data
            update.writes[NEXT_BOUNDARY_KEY] = str(self.next_boundary).encode()
        update.applied_events = int(counts.sum())
        update.late_events = int(counts[slots < self.next_boundary - 1].sum())
        update.writes.update(self._merged_rings(items, slots, counts))
        self.applied[source] = int(offsets.max())
        update.writes[APPLIED_PREFIX + str(source).encode()] = str(self.applied[source]).encode()
        return update

    def _merged_rings(self, items: np.ndarray, slots: np.ndarray, counts: np.ndarray) -> dict[bytes, bytes]:
        """New ring values of every touched item, merged for all items at once (no per-item numpy calls)."""
        unique_items, inverse = np.unique(items.astype(str), return_inverse=True)
        self.hitters.add(unique_items.tolist(), np.bincount(inverse, weights=counts, minlength=len(unique_items)))
        keys = [RING_PREFIX + item.encode() for item in unique_items]
        old_values = [value or b"" for value in self.db.get(keys)]
        old = decode_ring(b"".join(old_values))
        old_lengths = np.fromiter(map(len, old_values), dtype=np.int64, count=len(keys)) // RING_DTYPE.itemsize
        all_items = np.concatenate([np.repeat(np.arange(len(keys)), old_lengths), inverse])
        all_slots = np.concatenate([old["slot"], slots])
        all_counts = np.concatenate([old["count"].astype(np.int64), counts])
        keep = all_slots >= self.oldest_kept_slot()
        all_items, all_slots, all_counts = all_items[keep], all_slots[keep], all_counts[keep]
        order = np.lexsort((all_slots, all_items))
        all_items, all_slots, all_counts = all_items[order], all_slots[order], all_counts[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = (all_items[1:] != all_items[:-1]) | (all_slots[1:] != all_slots[:-1])
        starts = np.flatnonzero(first)
        merged = np.empty(len(starts), dtype=RING_DTYPE)
        merged["slot"] = all_slots[starts]
        merged["count"] = np.add.reduceat(all_counts, starts) if len(starts) else []
        bounds = np.searchsorted(all_items[starts], np.arange(len(keys) + 1)) * RING_DTYPE.itemsize
        buffer = merged.tobytes()
        return {key: buffer[bounds[k]:bounds[k + 1]] for k, key in enumerate(keys)}

    def oldest_kept_slot(self) -> int:
        """Slots before this can no longer be read by any boundary still to be scored.

        From the committed boundary, not the snapshot one: after a crash, the boundaries snapshotted but
        not yet committed are scored again from the rings.
        """
        if self.committed_next is None:
            return np.iinfo(np.int64).min
        return self.committed_next - self.spec.window_slots

    # --- watermark and scoring -------------------------------------------------------------------------

    def watermark_slot(self) -> int | None:
        """Last boundary the watermark has crossed; None until every source partition reported."""
        if len(self.source_max_ts_ms) < self.n_sources:
            return None
        return self.spec.watermark_slot(min(self.source_max_ts_ms.values()))

    def reach_slot(self, idle: bool = False) -> int | None:
        """Last boundary that may be scored. `idle`: the stream went quiet, close what the data reached."""
        if idle and self.source_max_ts_ms:
            return self.spec.slot_of(max(self.source_max_ts_ms.values()))
        return self.watermark_slot()

    def due_boundaries(self, idle: bool = False) -> list[int]:
        """Boundaries to score now, in order."""
        upto = self.reach_slot(idle)
        if self.next_boundary is None or upto is None:
            return []
        return list(range(self.next_boundary, upto + 1))

    def advance(self, boundary: int) -> None:
        """The boundary's snapshot is taken: the next due boundary is the one after it."""
        self.next_boundary = boundary + 1
        # weights halve over one bucket: the summary follows what the forecast window sees
        self.hitters.decay(0.5 ** (1 / self.spec.slots_per_bucket))

    def commit_scored(self, boundary: int) -> dict[bytes, bytes]:
        """The boundary's candidates are sent: the keys recording that it never needs scoring again."""
        self.committed_next = max(self.committed_next or boundary + 1, boundary + 1)
        return {NEXT_BOUNDARY_KEY: str(self.committed_next).encode()}

    def mark_scored(self, boundary: int) -> dict[bytes, bytes]:
        self.advance(boundary)
        return self.commit_scored(boundary)

    def snapshot(self) -> Snapshot:
        """The rings of the candidate items (the heavy hitters), flattened for vectorised bucketing."""
        names = self.hitters.candidates()
        item_ids: list[str] = []
        values: list[bytes] = []
        for item, value in zip(names, self.db.get([RING_PREFIX + n.encode() for n in names]), strict=True):
            if value:
                item_ids.append(item)
                values.append(value)
        # one decode of all rings at once: concatenating structured arrays one by one is ~10x slower
        joined = decode_ring(b"".join(values))
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values)) // RING_DTYPE.itemsize
        return Snapshot(item_ids, np.repeat(np.arange(len(values)), lengths), joined["slot"], joined["count"])
