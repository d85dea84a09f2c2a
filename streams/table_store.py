"""Exact table writes over faust's RocksDB store: one write = one changelog group, applied all or nothing.

Owns every faust/aiokafka internal the worker's table writes need, so `streams.app` never touches them:
the per-partition RocksDB handle, the aiokafka producer under faust's, record batches, and the
persisted changelog offset; also the consumer's committed offset of an input partition, which the idle
declaration compares with the broker's end offset (`committed_next_offset`).

A write (`TableWriter.commit`) is a dict of keys to values (None deletes) for one table partition. It
goes to the changelog as one *group*: the records, then a group-end record whose value is the number
of records before it. Only after the broker acked every record is the write applied locally, in ONE
RocksDB WriteBatch together with faust's persisted changelog offset (the group-end's offset).

Recovery (`GroupedRocksDBStore.apply_changelog_batch`, called by faust's recovery) stages changelog
records and applies them only when their group-end arrives: a worker killed between two record
batches of one write leaves an incomplete group in the changelog, which recovery drops — so an input
offset recorded in a group can never survive without the counts it guards, or the other way round.
The persisted offset is only ever set at a group end, so a later recovery never starts mid-group.
Group-end keys are unique (they carry the previous group's end offset), so log compaction on a real
cluster never removes one; compaction may remove records of a group superseded later, which is safe.
No scoring or window logic here.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import rocksdict
from faust.stores import STORES
from faust.stores.rocksdb import Store as FaustRocksDBStore

GROUP_END_PREFIX = b"__trail\0group_end__"
STORE_SCHEME = "trail-rocksdb"


def register_store() -> str:
    """Make `trail-rocksdb://` resolve to `GroupedRocksDBStore`; returns the store URL for faust."""
    STORES.aliases[STORE_SCHEME] = f"{__name__}:GroupedRocksDBStore"
    return f"{STORE_SCHEME}://"


def is_group_end(key: bytes | None) -> bool:
    return key is not None and key.startswith(GROUP_END_PREFIX)


class GroupedRocksDBStore(FaustRocksDBStore):
    """faust's RocksDB store whose changelog replay applies whole write groups only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._staged: dict[int, list[tuple[int, bytes, bytes | None]]] = defaultdict(list)
        self.dropped_records = 0   # records of incomplete groups seen in recovery (a crash mid-write)

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Callable[[Any], Any],
                              to_value: Callable[[Any], Any]) -> None:
        for event in batch:
            message = event.message
            staged = self._staged[message.partition]
            if not is_group_end(message.key):
                staged.append((message.offset, message.key, message.value))
                continue
            first_offset = message.offset - int(message.value)
            group = [(key, value) for offset, key, value in staged if offset >= first_offset]
            self.dropped_records += len(staged) - len(group)
            staged.clear()
            self.write_group(message.partition, group, message.offset)

    def revoke_partitions(self, table: Any, tps: Any) -> None:
        """Close the databases of revoked partitions now. faust only drops its reference and leaves closing to
        the garbage collector, so any other reference (a partition's state, a queued scoring job) kept the
        RocksDB lock and the partition could not be opened again ("lock hold by current process": the worker
        crashed on the next rebalance)."""
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                db = self._dbs.pop(tp.partition, None)
                if db is not None:
                    db.close()
                self._staged.pop(tp.partition, None)

    def write_group(self, partition: int, records: Iterable[tuple[bytes, bytes | None]], group_end: int) -> None:
        """One atomic local write: the records and the persisted changelog offset of their group end."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(self.offset_key, str(group_end).encode())
        self._db_for_partition(partition).write(batch)

    def partition_db(self, partition: int) -> rocksdict.Rdict:
        return self._db_for_partition(partition)


class TableWriter:
    """Sends write groups to a table's changelog and applies them locally once acked."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def commit(self, table: Any, partition: int, writes: Mapping[bytes, bytes | None]) -> None:
        """Changelog first (one group, every record acked), then one local WriteBatch with the offset."""
        if not writes:
            return
        store: GroupedRocksDBStore = table.data
        changelog = table.changelog_topic.get_topic_name()
        previous_end = store.persisted_offset(_tp(changelog, partition))
        records = list(writes.items())
        records.append((GROUP_END_PREFIX + str(previous_end if previous_end is not None else -1).encode(),
                        str(len(writes)).encode()))
        group_end = await self.send_records(changelog, partition, records)
        store.write_group(partition, writes.items(), group_end)

    async def send_records(self, topic: str, partition: int, records: list[tuple[bytes, bytes | None]]) -> int:
        """Send records to one partition as whole record batches; the offset of the last record.

        aiokafka's per-record send costs ~25 us (a future and a lookup per record) and was the largest
        cost of a table write; a BatchBuilder holds up to producer_max_batch_size bytes of records.
        """
        producer = self.app.producer._ensure_producer()  # the aiokafka producer under faust's
        sent: list[tuple[asyncio.Future, int]] = []
        batch, in_batch = producer.create_batch(), 0
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                sent.append((await producer.send_batch(batch, topic, partition=partition), in_batch))
                batch, in_batch = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=None) is None:
                    size = len(value or b"")
                    raise ValueError(f"a {size}-byte changelog record exceeds producer_max_batch_size")
            in_batch += 1
        sent.append((await producer.send_batch(batch, topic, partition=partition), in_batch))
        results = await asyncio.gather(*(future for future, _ in sent))
        return results[-1].offset + sent[-1][1] - 1

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        """Send one record through faust's producer and wait for the broker's ack."""
        await (await self.app.producer.send(topic, key, value, partition, None, None))


def partition_db(table: Any, partition: int) -> rocksdict.Rdict:
    """The RocksDB database holding one partition of a table."""
    return table.data._db_for_partition(partition)


def committed_next_offset(consumer: Any, tp: Any) -> int:
    """The next offset of `tp` that the consumer group has committed as processed (0 when none).

    faust keeps it per assigned partition after seeking to the committed offsets and after each commit;
    it has no public accessor.
    """
    return consumer._committed_offset.get(tp) or 0


def _tp(topic: str, partition: int) -> Any:
    from faust.types import TP
    return TP(topic, partition)
