"""Window state of one table partition (stage 2): item rings and the bookkeeping that makes counts exact.

Keys in the partition's RocksDB database (and its changelog):
- ``i:<item_id>``  -> the item's sparse ring of slot counts (`models.windows` encoding);
- ``m:applied:<input incarnation>:<source partition>`` -> the last source offset whose deltas are in the
  rings, so re-delivered deltas (after a crash, before the offset commit) are skipped, not counted twice;
  kept per incarnation of the input topic (its topic id), so a re-created topic is counted from offset 0;
- ``m:dlq:<input incarnation>:<source partition>`` -> the last source offset whose DLQ records this partition
  published (it owns the DLQ records of the sources `streams.deltas.rejections_target` maps to it), so a
  bad message re-read after a crash is not published twice;
- ``m:geometry`` -> the window geometry the rings were built with; another one is refused;
- ``e:<event_id>`` -> the slot of a counted event that carried an id: a repeat of the id is dropped as a
  duplicate, whichever worker read it and across restarts, while that slot is in the window (the ids are
  deleted once every bucket, when their slot leaves it);
- ``m:wm:<source partition>`` -> that source's max event time, from which the watermark is derived;
- ``m:next`` -> the next scoring boundary slot (every boundary before it has been scored).
`PartitionState.apply_messages` (and its one-message case `apply_deltas`) computes what to write without
changing anything; the caller (`streams.stage_two`) publishes the DLQ records it names, commits it
(changelog group + local write, `streams.table_store`) and only then calls `accept`, so memory never runs
ahead of what is stored.

The watermark is the minimum over the *active* source partitions of their max event time, less the
allowed lateness, so it does not depend on how fast or in which interleaving a replay arrives. A source is
idle once the worker reading it declared so (it has read everything in that partition and heard nothing new
for a while: `streams.stage_one`, like Flink's `withIdleness` but never during a catch-up). The
declaration names the partition's end offset then, and holds only while that end offset stands: before the
watermark moves because of an idle source, the caller asks the broker (`advance_relies_on_idle`, `confirm_idle`), so a
source whose reader stalls (a rebalance, a restart) with new messages waiting holds the watermark back. An
idle source rejoins with its next message; what a source sends behind the watermark is counted and reported
as late. No Kafka I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain, compress

import numpy as np

from models.windows import RING_DTYPE, WindowSpec, decode_ring
from streams.deltas import DeltaColumns
from streams.heavy_hitters import HeavyHitters

RING_PREFIX = b"i:"
APPLIED_PREFIX = b"m:applied:"
DLQ_PREFIX = b"m:dlq:"
WATERMARK_PREFIX = b"m:wm:"
NEXT_BOUNDARY_KEY = b"m:next"
EVENT_ID_PREFIX = b"e:"
GEOMETRY_KEY = b"m:geometry"
MAX_BOUNDARIES_PER_CALL = 16     # catch-up is spread over calls so one call never blocks the event loop long
FIRST_SIGHT_WINDOWS = 4          # a new partition state scores at most this many windows of history back


class StateCorrupt(RuntimeError):
    """A stored bookkeeping value is not one this code wrote."""


@dataclass
class StateUpdate:
    """What one or more deltas messages change: the keys to write, and the in-memory changes `accept` makes."""

    sources: list[tuple[int, int | None]] = field(default_factory=list)   # (source, idle end or None), in order
    writes: dict[bytes, bytes] = field(default_factory=dict)
    applied_events: int = 0
    skipped_entries: int = 0       # re-delivered input, already counted
    duplicate_events: int = 0      # events whose id is stored already
    late_events: int = 0           # counted, but their slot was already scored (or older than the window)
    source_max_ts_ms: dict[int, int] = field(default_factory=dict)
    applied_offsets: dict[int, int] = field(default_factory=dict)
    dlq_records: list[dict] = field(default_factory=list)   # to publish before the writes are committed
    dlq_offsets: dict[int, int] = field(default_factory=dict)
    first_boundary: int | None = None
    max_data_slot: int | None = None
    hitter_items: list[str] = field(default_factory=list)
    hitter_counts: np.ndarray | None = None


@dataclass
class Snapshot:
    """All rings of a partition, flattened: row r of slots/counts belongs to item_ids[item_index[r]]."""

    item_ids: list[str]
    item_index: np.ndarray
    slots: np.ndarray
    counts: np.ndarray


def parse_stored_int(key: bytes, value: bytes) -> int:
    """An integer exactly as this module stores it (ASCII decimal), else StateCorrupt saying what to do."""
    text = value.decode("ascii", errors="replace")
    if not text.lstrip("-").isdigit() or str(int(text)).encode() != value:
        raise StateCorrupt(f"stored value of {key!r} is {value[:40]!r}, not an integer this worker wrote; "
                           "the data dir was written by other code: move it away and let the worker rebuild "
                           "from the changelog")
    return int(text)


class PartitionState:
    def __init__(self, partition: int, db, spec: WindowSpec, n_sources: int, max_candidates: int = 10_000,
                 input_incarnation: str = "") -> None:
        self.partition = partition
        self.applied_prefix = APPLIED_PREFIX + input_incarnation.encode() + b":"
        self.dlq_prefix = DLQ_PREFIX + input_incarnation.encode() + b":"
        self.geometry = f"{spec.slot_s}/{spec.bucket_s}/{spec.n_buckets}".encode()
        self.db = db
        self.spec = spec
        self.n_sources = n_sources
        self.applied: dict[int, int] = {}
        self.dlq_published: dict[int, int] = {}   # source -> last source offset whose DLQ records went out
        self.source_max_ts_ms: dict[int, int] = {}
        self.idle_sources: dict[int, int] = {}    # declared idle by their reader (-> end offset then), until
                                                  # they send again or their end offset moves (`confirm_idle`)
        self.next_boundary: int | None = None     # next boundary to snapshot (in memory, runs ahead)
        self.committed_next: int | None = None    # next boundary not yet scored and committed
        self.max_data_slot: int | None = None     # newest slot holding a count (empty windows after it)
        self.last_watermark_slot: int | None = None
        self.hitters = HeavyHitters(max_candidates)
        self._load_meta()
        self._seed_from_rings()

    def _stored_int(self, key: bytes) -> int | None:
        value = self.db.get(key)
        return None if value is None else parse_stored_int(key, value)

    def _load_meta(self) -> None:
        geometry = self.db.get(GEOMETRY_KEY)
        if geometry is not None and geometry != self.geometry:
            raise StateCorrupt(f"partition {self.partition} holds rings built with window (slot_s/bucket_s/n_buckets)"
                               f" {geometry.decode(errors='replace')}, this worker has {self.geometry.decode()}; start "
                               "with the old window settings, or use another --app-id for the new one")
        for source in range(self.n_sources):
            applied = self._stored_int(self.applied_prefix + str(source).encode())
            if applied is not None:
                self.applied[source] = applied
            published = self._stored_int(self.dlq_prefix + str(source).encode())
            if published is not None:
                self.dlq_published[source] = published
            watermark = self._stored_int(WATERMARK_PREFIX + str(source).encode())
            if watermark is not None:
                self.source_max_ts_ms[source] = watermark
        self.next_boundary = self.committed_next = self._stored_int(NEXT_BOUNDARY_KEY)

    def _seed_from_rings(self) -> None:
        """After a restart or rebalance, rebuild the candidate summary from the stored rings (one scan)."""
        for key, value in self.db.items(from_key=RING_PREFIX):
            if not key.startswith(RING_PREFIX):
                break
            if value:
                ring = decode_ring(value)
                self.hitters.add([key[len(RING_PREFIX):].decode()], [int(ring["count"].sum())])
                self._note_data_slot(int(ring["slot"].max()))

    def _note_data_slot(self, slot: int) -> None:
        if self.max_data_slot is None or slot > self.max_data_slot:
            self.max_data_slot = slot

    # --- applying deltas -------------------------------------------------------------------------------

    def apply_deltas(self, source: int, watermark_ms: int, columns: DeltaColumns,
                     idle_end: int | None = None) -> StateUpdate:
        """What adding one deltas message to the rings writes; nothing changes until `accept`. `idle_end`: the
        message declares its source idle, read up to that end offset."""
        return self.apply_messages([(source, watermark_ms, columns, idle_end)])

    def apply_messages(self, messages: list[tuple[int, int, DeltaColumns, int | None]]) -> StateUpdate:
        """What adding deltas messages (source, watermark, columns, idle end), in order, writes: the same as
        applying them one by one, as one write (one changelog group instead of one per message)."""
        update = StateUpdate()
        fresh_parts = []
        for source, watermark_ms, columns, idle_end in messages:
            update.sources.append((source, idle_end))
            if watermark_ms > update.source_max_ts_ms.get(source, self.source_max_ts_ms.get(source, -1)):
                update.source_max_ts_ms[source] = watermark_ms
                update.writes[WATERMARK_PREFIX + str(source).encode()] = str(watermark_ms).encode()
            if columns.rejected:
                self._dlq_records(source, columns.rejected, update)
            part = self._fresh_entries(source, columns, update)
            if part is None:
                continue
            if not fresh_parts and self.next_boundary is None:   # as if applied one by one: the first data
                update.first_boundary = self.first_boundary(part[1], watermark_ms, update)
            fresh_parts.append(part)
        if not fresh_parts:
            return update
        items = list(chain.from_iterable(part[0] for part in fresh_parts))
        slots, counts = (np.concatenate([part[k] for part in fresh_parts]) for k in (1, 2))
        next_boundary = self.next_boundary
        if next_boundary is None:
            next_boundary = update.first_boundary
            update.writes[NEXT_BOUNDARY_KEY] = str(next_boundary).encode()
            update.writes[GEOMETRY_KEY] = self.geometry
        update.applied_events = int(counts.sum())
        update.late_events = int(counts[slots < next_boundary - 1].sum())
        update.max_data_slot = int(slots.max())
        update.writes.update(self._merged_rings(items, slots, counts, update))
        return update

    def _dlq_records(self, source: int, rejected: list[tuple[int, dict]], update: StateUpdate) -> None:
        """The DLQ records of source offsets not yet published (a re-read after a crash publishes nothing)."""
        published = update.dlq_offsets.get(source, self.dlq_published.get(source, -1))
        fresh = [record for offset, record in rejected if offset > published]
        if fresh:
            update.dlq_records += fresh
            update.dlq_offsets[source] = rejected[-1][0]
            update.writes[self.dlq_prefix + str(source).encode()] = str(rejected[-1][0]).encode()

    def _fresh_entries(self, source: int, columns: DeltaColumns, update: StateUpdate):
        """(items, slots, counts) of the entries past the source's applied offset (the stored one, or an
        earlier message's in `update`) whose event id is not stored yet, else None; records the new applied
        offset and the ids."""
        if not columns.offsets:
            return None
        offsets = np.asarray(columns.offsets, dtype=np.int64)
        fresh = offsets > update.applied_offsets.get(source, self.applied.get(source, -1))
        update.skipped_entries += int((~fresh).sum())
        if not fresh.any():
            return None
        update.applied_offsets[source] = int(offsets.max())
        update.writes[self.applied_prefix + str(source).encode()] = str(int(offsets.max())).encode()
        # item ids stay a list (an object array cost a conversion each way); all fresh is the usual case
        everything = bool(fresh.all())
        items = columns.items if everything else list(compress(columns.items, fresh.tolist()))
        slots = np.asarray(columns.slots, dtype=np.int64)
        counts = np.asarray(columns.counts, dtype=np.int64)
        if not everything:
            slots, counts = slots[fresh], counts[fresh]
        if columns.event_ids:
            first = self._first_sightings(np.asarray(columns.event_ids, dtype=object)[fresh], slots, update)
            items, slots, counts = list(compress(items, first.tolist())), slots[first], counts[first]
        return (items, slots, counts) if len(items) else None

    def _first_sightings(self, event_ids: np.ndarray, slots: np.ndarray, update: StateUpdate) -> np.ndarray:
        """Mask of the entries to count: those without an id, and the first sighting of each id."""
        keep = np.ones(len(event_ids), dtype=bool)
        rows = [k for k, event_id in enumerate(event_ids) if event_id is not None]
        keys = [EVENT_ID_PREFIX + event_ids[k].encode() for k in rows]
        for k, key, stored in zip(rows, keys, self.db.get(keys), strict=True):
            if stored is not None or key in update.writes:
                keep[k] = False
            else:
                update.writes[key] = str(int(slots[k])).encode()
        update.duplicate_events += int((~keep).sum())
        return keep

    def first_boundary(self, slots: np.ndarray, watermark_ms: int, update: StateUpdate | None = None) -> int:
        """The first boundary: after the first data, but at most FIRST_SIGHT_WINDOWS windows behind the
        newest event seen (`update`: including its messages' watermarks). A backfill of recent history is
        scored step by step; an event from years ago does not make every slot since then due (it is
        counted, and reported as late)."""
        pending = update.source_max_ts_ms.values() if update is not None else ()
        newest_ms = max([watermark_ms, *self.source_max_ts_ms.values(), *pending])
        horizon = FIRST_SIGHT_WINDOWS * self.spec.window_slots
        return max(int(slots.min()) + 1, self.spec.watermark_slot(newest_ms) - horizon + 1)

    def accept(self, update: StateUpdate) -> None:
        """The update is committed: move the in-memory bookkeeping to match the store."""
        for source, idle_end in update.sources:
            if idle_end is not None:
                self.idle_sources[source] = idle_end
            elif source in self.idle_sources:
                # the stream wakes up: every idle source must declare again (its reader repeats that every
                # timeout), so the first source to resume cannot drag the watermark past the others' new data
                self.idle_sources.clear()
        self.source_max_ts_ms.update(update.source_max_ts_ms)
        self.applied.update(update.applied_offsets)
        self.dlq_published.update(update.dlq_offsets)
        if update.first_boundary is not None:
            self.next_boundary = self.committed_next = update.first_boundary
        if update.max_data_slot is not None:
            self._note_data_slot(update.max_data_slot)
        if update.hitter_counts is not None:
            self.hitters.add(update.hitter_items, update.hitter_counts)

    def _merged_rings(self, item_list: list[str], slots: np.ndarray, counts: np.ndarray,
                      update: StateUpdate) -> dict[bytes, bytes]:
        """New ring values of every touched item, merged for all items at once (no per-item numpy calls)."""
        # items numbered in order of first appearance by a dict: np.unique sorts the Python strings (6x slower)
        number_of = {item: k for k, item in enumerate(dict.fromkeys(item_list))}
        inverse = np.fromiter(map(number_of.__getitem__, item_list), dtype=np.int64, count=len(item_list))
        update.hitter_items = list(number_of)
        update.hitter_counts = np.bincount(inverse, weights=counts, minlength=len(number_of))
        keys = [RING_PREFIX + item.encode() for item in update.hitter_items]
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
        bounds = (np.searchsorted(all_items[starts], np.arange(len(keys) + 1)) * RING_DTYPE.itemsize).tolist()
        buffer = merged.tobytes()
        return {key: buffer[start:stop] for key, start, stop in zip(keys, bounds, bounds[1:], strict=False)}

    def oldest_kept_slot(self) -> int:
        """Slots before this can no longer be read by any boundary still to be scored.

        From the committed boundary, not the snapshot one: after a crash, the boundaries snapshotted but
        not yet committed are scored again from the rings.
        """
        if self.committed_next is None:
            return np.iinfo(np.int64).min
        return self.committed_next - self.spec.window_slots

    # --- watermark and scoring -------------------------------------------------------------------------

    def active_sources(self) -> list[int] | None:
        """Sources that hold the watermark back: every source not declared idle; None while one that is not
        idle has not reported yet."""
        if any(s not in self.source_max_ts_ms and s not in self.idle_sources for s in range(self.n_sources)):
            return None
        return [s for s in range(self.n_sources) if s not in self.idle_sources]

    def watermark_slot(self) -> int | None:
        """Last boundary the watermark has crossed; None until the sources that count have reported.

        Never goes back: when every source has gone idle, the last watermark stands (catch-up of the
        boundaries it already allows goes on).
        """
        slot = self._current_watermark_slot()
        if slot is not None and (self.last_watermark_slot is None or slot > self.last_watermark_slot):
            self.last_watermark_slot = slot
        return self.last_watermark_slot

    def _current_watermark_slot(self) -> int | None:
        sources = self.active_sources()
        if not sources:
            return None
        return self.spec.watermark_slot(min(self.source_max_ts_ms[s] for s in sources))

    def every_source_idle(self) -> bool:
        """Whether every source partition is declared idle (read to its end offset and silent)."""
        return len(self.idle_sources) == self.n_sources

    def advance_relies_on_idle(self) -> bool:
        """Whether the watermark would now move past the last one only because some source is idle: the
        caller must first `confirm_idle` with the sources' end offsets as they are now."""
        if not self.idle_sources:
            return False
        slot = self._current_watermark_slot()
        return slot is not None and (self.last_watermark_slot is None or slot > self.last_watermark_slot)

    def confirm_idle(self, end_offsets: dict[int, int | None]) -> None:
        """Keep idle only the sources whose end offset is still the one they were declared idle at.

        A source with messages after its declaration is not idle, even while its reader has not read them
        (stalled in a rebalance, restarting): otherwise the others would drag the watermark past its events.
        A source whose end offset is unknown counts as not idle.
        """
        for source, declared_end in list(self.idle_sources.items()):
            end = end_offsets.get(source)
            if end is None or end > declared_end:
                del self.idle_sources[source]

    def reach_slot(self, idle: bool = False) -> int | None:
        """Last boundary that may be scored. `idle`: the stream went quiet, close what the data reached."""
        if idle and self.source_max_ts_ms:
            return self.spec.slot_of(max(self.source_max_ts_ms.values()))
        return self.watermark_slot()

    def due_boundaries(self, idle: bool = False, limit: int = MAX_BOUNDARIES_PER_CALL) -> list[int]:
        """Boundaries to score now, in order, at most `limit` of them (the rest stay due)."""
        upto = self.reach_slot(idle)
        if self.next_boundary is None or upto is None:
            return []
        return list(range(self.next_boundary, min(upto, self.next_boundary + limit - 1) + 1))

    def empty_until(self, upto: int) -> int | None:
        """If every boundary from the next one up to `upto` reads an empty window, `upto`; else None.

        A window is empty once its oldest slot is past the newest count, so after a long gap the
        boundaries in between need no snapshot: one progress report covers them all.
        """
        if self.next_boundary is None or self.max_data_slot is None or upto < self.next_boundary:
            return None
        return upto if self.next_boundary - self.spec.window_slots > self.max_data_slot else None

    def advance(self, boundary: int) -> None:
        """The boundary's snapshot is taken: the next due boundary is the one after it."""
        steps = boundary + 1 - (self.next_boundary or boundary)
        self.next_boundary = boundary + 1
        # weights halve over one bucket: the summary follows what the forecast window sees
        self.hitters.decay(0.5 ** (min(steps, 4 * self.spec.slots_per_bucket) / self.spec.slots_per_bucket))

    def commit_scored(self, boundary: int) -> dict[bytes, bytes | None]:
        """The boundary's candidates are sent: the keys recording that it never needs scoring again (and,
        once a bucket, the deletion of event ids whose slot has left the window)."""
        writes: dict[bytes, bytes | None] = {
            NEXT_BOUNDARY_KEY: str(max(self.committed_next or boundary + 1, boundary + 1)).encode()}
        if boundary % self.spec.slots_per_bucket == 0:
            oldest_slot = boundary + 1 - self.spec.window_slots
            writes.update(self.expired_event_ids(oldest_slot))
            writes.update(self.expired_rings(oldest_slot))
        return writes

    def expired_rings(self, oldest_slot: int) -> dict[bytes, None]:
        """Deletions of the rings whose newest slot is before `oldest_slot`: items no longer touched would
        otherwise keep their last counts (and a key) for ever. Their summary weight goes with them."""
        expired = {}
        size = RING_DTYPE.itemsize
        for key, value in self.db.items(from_key=RING_PREFIX):
            if not key.startswith(RING_PREFIX):
                break
            if not value or int(decode_ring(value[-size:])["slot"][0]) < oldest_slot:
                expired[key] = None
        for key in expired:
            self.hitters.weights.pop(key[len(RING_PREFIX):].decode(), None)
        return expired

    def expired_event_ids(self, oldest_slot: int) -> dict[bytes, None]:
        """Deletions of the stored event ids whose slot is before `oldest_slot`."""
        expired = {}
        for key, value in self.db.items(from_key=EVENT_ID_PREFIX):
            if not key.startswith(EVENT_ID_PREFIX):
                break
            if int(value) < oldest_slot:
                expired[key] = None
        return expired

    def accept_scored(self, boundary: int) -> None:
        """`commit_scored`'s keys are stored."""
        self.committed_next = max(self.committed_next or boundary + 1, boundary + 1)

    def mark_scored(self, boundary: int) -> dict[bytes, bytes]:
        self.advance(boundary)
        writes = self.commit_scored(boundary)
        self.accept_scored(boundary)
        return writes

    def snapshot(self) -> Snapshot:
        """The rings of the candidate items (the heavy hitters), flattened for vectorised bucketing."""
        names = self.hitters.candidates()
        stored = self.db.get([RING_PREFIX + n.encode() for n in names])
        item_ids: list[str] = list(compress(names, stored))   # items with a ring (a value is never empty)
        values: list[bytes] = list(filter(None, stored))
        # one decode of all rings at once: concatenating structured arrays one by one is ~10x slower
        joined = decode_ring(b"".join(values))
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values)) // RING_DTYPE.itemsize
        return Snapshot(item_ids, np.repeat(np.arange(len(values)), lengths), joined["slot"], joined["count"])
