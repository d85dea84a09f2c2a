"""Local aggregation (stage 1): a batch of `clicks` messages -> (item, slot) count deltas per item partition.

Each worker pre-aggregates what it reads, whatever partition an event arrived on, and sends one deltas
message per (source partition, target partition) per batch to the internal deltas topic, keyed to the
item's partition; the owner of that partition adds them to its table (stage 2, `streams.state`). Entries
keep the source offset of the message they came from, so stage 2 can skip re-delivered input exactly.
Every deltas message also carries the source partition's max event time, which is how the watermark
reaches partitions that received no entries. Rejected input travels the same way: the DLQ records of a
source partition go, in offset order, to one target partition (`rejections_target`), whose owner publishes
each once (a re-read after a crash is skipped like re-delivered deltas). Pure: no Kafka I/O here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from models.windows import WindowSpec
from streams._fastpath import count_by_partition, int_column_within, str_column_within
from streams.events import MIN_TS_MS, ClickEvent, PlainEnvelope, Rejection, decode_message, plain_envelope
from streams.partitioning import PartitionCache


class RecentIds:
    """Bounded memory of recently seen event ids: two generations, the older dropped when the newer fills."""

    def __init__(self, capacity: int) -> None:
        self.half = max(1, capacity // 2)
        self.current: set[str] = set()
        self.previous: set[str] = set()

    def seen_before(self, event_id: str) -> bool:
        """True if `event_id` was seen recently; remembers it otherwise."""
        if event_id in self.current or event_id in self.previous:
            return True
        if len(self.current) >= self.half:
            self.previous, self.current = self.current, set()
        self.current.add(event_id)
        return False


@dataclass
class DeltaColumns:
    """Entries for one (source partition, target partition): parallel columns."""

    offsets: list[int] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    event_ids: list[str | None] = field(default_factory=list)   # one per entry (None: aggregated), or empty
    rejected: list[tuple[int, dict]] = field(default_factory=list)  # (source offset, DLQ record v1), by offset

    def append(self, offset: int, item_id: str, slot: int, count: int, event_id: str | None) -> None:
        self.offsets.append(offset)
        self.items.append(item_id)
        self.slots.append(slot)
        self.counts.append(count)
        if event_id is not None and len(self.event_ids) < len(self.offsets) - 1:
            self.event_ids.extend([None] * (len(self.offsets) - 1 - len(self.event_ids)))
        if event_id is not None or self.event_ids:
            self.event_ids.append(event_id)

    def extend_aggregated(self, offset: int, items: list[str], slots: list[int], counts: list[int]) -> None:
        """`append(offset, item, slot, count, None)` for each of parallel lists, in one call."""
        n = len(items)
        self.offsets.extend([offset] * n)
        self.items.extend(items)
        self.slots.extend(slots)
        self.counts.extend(counts)
        if self.event_ids:
            self.event_ids.extend([None] * n)


@dataclass
class RoutedBatch:
    deltas: dict[tuple[int, int], DeltaColumns]          # (source, target) -> entries
    watermarks: dict[int, int]                           # source partition -> max event ts ms so far
    rejections: list[tuple[int, int, Rejection]]         # (source partition, offset, why)
    events: int = 0
    duplicates: int = 0


class DeltaRouter:
    """Stateful stage-1 aggregator of one worker (remembers recent event ids and max event times)."""

    def __init__(self, n_partitions: int, spec: WindowSpec, dedup_capacity: int) -> None:
        self.n_partitions = n_partitions
        self.spec = spec
        self.partition_of = PartitionCache(n_partitions)
        self.recent_ids = RecentIds(dedup_capacity)
        self.max_ts_ms: dict[int, int] = {}

    def route(self, messages: list[tuple[int, int, bytes | None]], max_ts_ms: int,
              min_ts_ms: int = MIN_TS_MS) -> RoutedBatch:
        """Aggregate messages (source partition, offset, value) into routed deltas."""
        deltas: dict[tuple[int, int], DeltaColumns] = defaultdict(DeltaColumns)
        batch = RoutedBatch(deltas=deltas, watermarks={}, rejections=[])
        for source, offset, value in messages:
            plain = plain_envelope(value, max_ts_ms, min_ts_ms)
            if plain is not None:   # the common envelope: no event ids to drop repeats of, nothing rejected
                batch.events += len(plain.item_ids)
                self._add_plain(deltas, source, offset, plain)
                self._advance_watermark(batch, source, plain.newest_ts_ms)
                continue
            events, rejections = decode_message(value, max_ts_ms, min_ts_ms)
            for rejection in rejections:
                batch.rejections.append((source, offset, rejection))
            fresh = self._drop_duplicates(events)
            batch.duplicates += len(events) - len(fresh)
            batch.events += len(fresh)
            if fresh:
                self._add_message(deltas, source, offset, fresh)
            self._advance_watermark(batch, source, max((event.ts_ms for event in fresh), default=-1))
        return batch

    def _advance_watermark(self, batch: RoutedBatch, source: int, newest_ts_ms: int) -> None:
        if newest_ts_ms > self.max_ts_ms.get(source, -1):
            self.max_ts_ms[source] = newest_ts_ms
        batch.watermarks[source] = self.max_ts_ms.get(source, -1)

    def _drop_duplicates(self, events: list[ClickEvent]) -> list[ClickEvent]:
        seen = self.recent_ids.seen_before
        return [e for e in events if e.event_id is None or not seen(e.event_id)]

    def _add_message(self, deltas: dict, source: int, offset: int, events: list[ClickEvent]) -> None:
        """Events without an id are aggregated per (item, slot); events with one travel one by one, so the
        item's partition owner can drop an id it has stored (de-duplication across workers and restarts)."""
        slot_ms = self.spec.slot_ms
        per_key: dict[tuple[str, int], int] = {}
        count_of = per_key.get
        identified = []
        for item_id, ts_ms, _, event_id in events:
            if event_id is None:
                key = (item_id, ts_ms // slot_ms)
                per_key[key] = count_of(key, 0) + 1
            else:
                identified.append((item_id, ts_ms // slot_ms, event_id))
        if per_key:
            self._add_counts(deltas, source, offset, per_key)
        for item_id, slot, event_id in identified:
            deltas[(source, self.partition_of(item_id))].append(offset, item_id, slot, 1, event_id)

    def _add_plain(self, deltas: dict, source: int, offset: int, plain: PlainEnvelope) -> None:
        """Aggregated entries of one plain envelope, counted and split by target in compiled code (what
        `_add_counts` of its Counter makes, in the same order; tests/test_input_properties.py holds them equal)."""
        slot_ms = self.spec.slot_ms
        by_target = count_by_partition(plain.item_ids, plain.ts_ms, slot_ms, self.n_partitions)
        if by_target is None:   # more slots in one envelope than the compiled path groups
            self._add_counts(deltas, source, offset,
                             Counter(zip(plain.item_ids, [t // slot_ms for t in plain.ts_ms], strict=True)))
            return
        for target, (items, slots, counts) in by_target.items():
            deltas[(source, target)].extend_aggregated(offset, items, slots, counts)

    def _add_counts(self, deltas: dict, source: int, offset: int, per_key: dict[tuple[str, int], int]) -> None:
        """Aggregated entries of one source message: (item, slot) -> count."""
        keys = list(per_key)
        self._add_entries(deltas, source, offset, [k[0] for k in keys], [k[1] for k in keys], per_key.values())

    def _add_entries(self, deltas: dict, source: int, offset: int, items: list[str], slots: list[int],
                     counts: Iterable[int]) -> None:
        """Entries of one source message (parallel item, slot, count), each to its item's partition."""
        by_target: dict[int, tuple[list, list, list]] = {}
        for item_id, slot, count, target in zip(items, slots, counts, self.partition_of.many(items), strict=True):
            rows = by_target.get(target)
            if rows is None:
                rows = by_target[target] = ([], [], [])
            rows[0].append(item_id)
            rows[1].append(slot)
            rows[2].append(count)
        for target, (target_items, target_slots, target_counts) in by_target.items():
            deltas[(source, target)].extend_aggregated(offset, target_items, target_slots, target_counts)


class InvalidInternalMessage(ValueError):
    """An internal-topic message that this code did not write (forged, corrupt, or from other code)."""


MAX_DELTAS_BYTES = 512 * 1024      # a deltas message is split at source offsets beyond this
MAX_OFFSET = 2**53                 # Kafka offsets this large do not occur; a forged one must not skip input
_ENTRY_OVERHEAD_BYTES = 40         # offset, slot, count and JSON punctuation of one entry, generously


def encode_deltas(source: int, watermark_ms: int, columns: DeltaColumns | None) -> list[bytes]:
    """Deltas messages for one (source, target): one, or several split at source-offset changes so each
    stays near MAX_DELTAS_BYTES (entries of one source offset are never split: the applied offset guards
    whole source messages). `columns` None means a watermark-only message."""
    if columns is None or not columns.offsets:
        return [orjson.dumps({"src": source, "wm": watermark_ms})]
    if 2 * sum(map(len, columns.items)) + _ENTRY_OVERHEAD_BYTES * len(columns.items) <= MAX_DELTAS_BYTES:
        return [_encode_part(source, watermark_ms, columns, 0, len(columns.items))]   # the loop would not split
    messages, start, size = [], 0, 0
    for k, item in enumerate(columns.items):
        if size > MAX_DELTAS_BYTES and columns.offsets[k] != columns.offsets[k - 1]:
            messages.append(_encode_part(source, watermark_ms, columns, start, k))
            start, size = k, 0
        size += len(item) * 2 + _ENTRY_OVERHEAD_BYTES
    messages.append(_encode_part(source, watermark_ms, columns, start, len(columns.items)))
    return messages


def rejections_target(source: int, n_partitions: int) -> int:
    """The target partition whose owner publishes a source partition's DLQ records (one, so they stay in order)."""
    return source % n_partitions


def encode_rejections(source: int, watermark_ms: int, rejected: list[tuple[int, bytes]]) -> list[bytes]:
    """Deltas messages carrying DLQ records `(source offset, record JSON)` of one source, in offset order, split
    near MAX_DELTAS_BYTES but never inside one source offset (the owner guards whole source messages)."""
    messages, part, size = [], [], 0
    for k, (offset, record) in enumerate(rejected):
        if part and size > MAX_DELTAS_BYTES and offset != rejected[k - 1][0]:
            messages.append(_encode_rejected_part(source, watermark_ms, part))
            part, size = [], 0
        part.append((offset, record))
        size += len(record) + _ENTRY_OVERHEAD_BYTES
    if part:
        messages.append(_encode_rejected_part(source, watermark_ms, part))
    return messages


def _encode_rejected_part(source: int, watermark_ms: int, part: list[tuple[int, bytes]]) -> bytes:
    rows = b",".join(b"[%d,%s]" % (offset, record) for offset, record in part)
    return b'{"src":%d,"wm":%d,"r":[%s]}' % (source, watermark_ms, rows)


def encode_idle(source: int, watermark_ms: int, end_offset: int) -> bytes:
    """A deltas message declaring `source` idle: its reader has read all of it, up to `end_offset` (the
    partition's end offset then), and heard nothing new. Idle holds only while that end offset stands."""
    return orjson.dumps({"src": source, "wm": watermark_ms, "idle": True, "end": end_offset})


def _encode_part(source: int, watermark_ms: int, columns: DeltaColumns, start: int, stop: int) -> bytes:
    body = {"src": source, "wm": watermark_ms, "o": columns.offsets[start:stop], "i": columns.items[start:stop],
            "s": columns.slots[start:stop], "c": columns.counts[start:stop]}
    event_ids = columns.event_ids[start:stop]
    if any(event_id is not None for event_id in event_ids):
        body["e"] = event_ids + [None] * (stop - start - len(event_ids))
    return orjson.dumps(body)


def decode_deltas(value: bytes | None, n_sources: int, max_ts_ms: int) -> tuple[int, int, DeltaColumns, int | None]:
    """(source, watermark ms, entries, idle end offset) of a deltas message, checked entry by entry; the last
    is None unless the message declares its source idle. InvalidInternalMessage if anything is out of the
    range this code writes (a forged offset would make real input be skipped)."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise InvalidInternalMessage(f"deltas message is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInternalMessage("deltas message is not a JSON object")
    source, watermark = body.get("src"), body.get("wm")
    if type(source) is not int or not 0 <= source < n_sources:
        raise InvalidInternalMessage(f"deltas source partition {source!r} is not in [0, {n_sources})")
    if type(watermark) is not int or not -1 <= watermark <= max_ts_ms:
        raise InvalidInternalMessage(f"deltas watermark {watermark!r} is not an event time up to {max_ts_ms}")
    idle, idle_end = body.get("idle", False), body.get("end")
    if type(idle) is not bool or (idle and "o" in body):
        raise InvalidInternalMessage("deltas idle flag must be a boolean, on a message without entries")
    if idle and (type(idle_end) is not int or not 0 <= idle_end < MAX_OFFSET):
        raise InvalidInternalMessage(f"an idle declaration needs the source's end offset, got {idle_end!r}")
    columns = DeltaColumns(body.get("o", []), body.get("i", []), body.get("s", []), body.get("c", []),
                           body.get("e", []), _decode_rejected(body))
    _check_columns(columns, max_ts_ms)
    return source, watermark, columns, idle_end if idle else None


def _decode_rejected(body: dict) -> list[tuple[int, dict]]:
    rejected = body.get("r", [])
    if rejected and ("o" in body or body.get("idle")):
        raise InvalidInternalMessage("deltas DLQ records travel in a message of their own")
    if not isinstance(rejected, list):
        raise InvalidInternalMessage("deltas DLQ records must be a list")
    rows = []
    for row in rejected:
        if not (isinstance(row, list) and len(row) == 2 and type(row[0]) is int and 0 <= row[0] < MAX_OFFSET
                and isinstance(row[1], dict)):
            raise InvalidInternalMessage("a deltas DLQ row must be [source offset in [0, 2^53), DLQ record object]")
        rows.append((row[0], row[1]))
    if any(b[0] < a[0] for a, b in zip(rows, rows[1:], strict=False)):
        raise InvalidInternalMessage("deltas DLQ record offsets must not decrease")
    return rows


def _check_columns(columns: DeltaColumns, max_ts_ms: int) -> None:
    # one compiled pass per column: builtins over each column (map, set, min, max, sorted) were ~2/3 of decoding
    lists = (columns.offsets, columns.items, columns.slots, columns.counts)
    if not all(isinstance(column, list) for column in lists) or len({len(column) for column in lists}) != 1:
        raise InvalidInternalMessage("deltas columns o, i, s, c must be lists of one length")
    if columns.offsets:
        _check_entries(columns, max_ts_ms)
    _check_event_ids(columns)


def _check_entries(columns: DeltaColumns, max_ts_ms: int) -> None:
    if not int_column_within(columns.offsets, 0, MAX_OFFSET - 1, True):
        raise InvalidInternalMessage("deltas offsets must be non-decreasing integers in [0, 2^53), got "
                                     f"{columns.offsets[:5]!r}...")
    if not str_column_within(columns.items, 1, 256):
        raise InvalidInternalMessage("deltas item ids must be strings of 1 to 256 characters")
    if not int_column_within(columns.slots, 0, max_ts_ms, False):
        raise InvalidInternalMessage("deltas slots must be non-negative integers not beyond the latest event time")
    if not int_column_within(columns.counts, 1, 2**31 - 1, False):
        raise InvalidInternalMessage("deltas counts must be positive integers below 2^31")


def _check_event_ids(columns: DeltaColumns) -> None:
    ids = columns.event_ids
    if not isinstance(ids, list) or (ids and len(ids) != len(columns.offsets)):
        raise InvalidInternalMessage("deltas event ids must be a list as long as the entries")
    if not all(i is None or (type(i) is str and 0 < len(i) <= 256) for i in ids):
        raise InvalidInternalMessage("deltas event ids must be null or strings of 1 to 256 characters")
