"""Key -> partition, the same function Kafka's Java clients use by default (murmur2, positive, mod n).

Single events keyed by `item_id` from any default Kafka producer land where the worker routes that
item's deltas, so the item's counts, catalogue entry and scoring all live on one partition.
"""

from __future__ import annotations

from itertools import compress, repeat
from operator import is_

from streams._fastpath import murmur2_partition


def partition_for(key: bytes, n_partitions: int) -> int:
    """The Java clients' murmur2 partitioner, in C: the same function stage 1's compiled counting routes with
    (`count_by_partition`), ~20x faster than kafka-python's pure Python one, which tests/test_partitioning.py
    holds it to."""
    return murmur2_partition(key, n_partitions)


class PartitionCache:
    """Memoised partition_for for hot item ids (a dict lookup is still ~3x cheaper than the hash)."""

    def __init__(self, n_partitions: int, capacity: int = 1_000_000) -> None:
        self.n_partitions = n_partitions
        self.capacity = capacity
        self._cache: dict[str, int] = {}

    def __call__(self, item_id: str) -> int:
        partition = self._cache.get(item_id)
        if partition is None:
            if len(self._cache) >= self.capacity:
                self._cache.clear()
            partition = self._cache[item_id] = partition_for(item_id.encode(), self.n_partitions)
        return partition

    def many(self, item_ids: list[str]) -> list[int]:
        """`self(item_id)` for each, in one call (the hot path's per-item method call was a third of its cost)."""
        partitions = list(map(self._cache.get, item_ids))
        if None in partitions:   # hash the new ids in one pass (builtins only), then look every id up again
            missing = list(compress(item_ids, map(is_, partitions, repeat(None))))
            new = dict(zip(missing, map(murmur2_partition, map(str.encode, missing), repeat(self.n_partitions)),
                           strict=True))
            if len(self._cache) + len(new) > self.capacity:   # (one call's new ids may overfill it once)
                self._cache.clear()
            self._cache.update(new)
            partitions = list(map(self._cache.get, item_ids))
        return partitions
