"""Local aggregation (stage 1): a batch of `clicks` messages -> (item, slot) count deltas per item partition.

Each worker pre-aggregates what it reads, whatever partition an event arrived on, and sends one deltas
message per (source partition, target partition) per batch to the internal deltas topic, keyed to the
item's partition; the owner of that partition adds them to its table (stage 2, `streams.state`). Entries
keep the source offset of the message they came from, so stage 2 can skip re-delivered input exactly.
Every deltas message also carries the source partition's max event time, which is how the watermark
reaches partitions that received no entries. Pure: no Kafka I/O here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import orjson

from streams.events import ClickEvent, Rejection, decode_message
from streams.partitioning import PartitionCache
from streams.windows import WindowSpec


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

    def route(self, messages: list[tuple[int, int, bytes | None]], max_ts_ms: int) -> RoutedBatch:
        """Aggregate messages (source partition, offset, value) into routed deltas."""
        deltas: dict[tuple[int, int], DeltaColumns] = defaultdict(DeltaColumns)
        batch = RoutedBatch(deltas=deltas, watermarks={}, rejections=[])
        for source, offset, value in messages:
            events, rejections = decode_message(value, max_ts_ms)
            for rejection in rejections:
                batch.rejections.append((source, offset, rejection))
            fresh = self._drop_duplicates(events)
            batch.duplicates += len(events) - len(fresh)
            batch.events += len(fresh)
            if fresh:
                self._add_message(deltas, source, offset, fresh)
                newest = max(event.ts_ms for event in fresh)
                if newest > self.max_ts_ms.get(source, -1):
                    self.max_ts_ms[source] = newest
            batch.watermarks[source] = self.max_ts_ms.get(source, -1)
        return batch

    def _drop_duplicates(self, events: list[ClickEvent]) -> list[ClickEvent]:
        seen = self.recent_ids.seen_before
        return [e for e in events if e.event_id is None or not seen(e.event_id)]

    def _add_message(self, deltas: dict, source: int, offset: int, events: list[ClickEvent]) -> None:
        slot_ms = self.spec.slot_ms
        per_key: dict[tuple[str, int], int] = defaultdict(int)
        for event in events:
            per_key[(event.item_id, event.ts_ms // slot_ms)] += 1
        for (item_id, slot), count in per_key.items():
            columns = deltas[(source, self.partition_of(item_id))]
            columns.offsets.append(offset)
            columns.items.append(item_id)
            columns.slots.append(slot)
            columns.counts.append(count)


def encode_deltas(source: int, watermark_ms: int, columns: DeltaColumns | None) -> bytes:
    """One deltas message; `columns` None means a watermark-only message."""
    body = {"src": source, "wm": watermark_ms}
    if columns is not None:
        body.update(o=columns.offsets, i=columns.items, s=columns.slots, c=columns.counts)
    return orjson.dumps(body)


def decode_deltas(value: bytes) -> tuple[int, int, DeltaColumns]:
    body = orjson.loads(value)
    columns = DeltaColumns(body.get("o", []), body.get("i", []), body.get("s", []), body.get("c", []))
    return body["src"], body["wm"], columns
