"""Item -> partition: the worker's routing agrees with the partitioner of Kafka's Java clients."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as reference_murmur2

from streams.partitioning import PartitionCache, partition_for


def reference_partition(key: bytes, n_partitions: int) -> int:
    """kafka-python's port of the Java client's default partitioner (murmur2, positive, mod n)."""
    return (reference_murmur2(key) & 0x7FFFFFFF) % n_partitions


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=40).map(str.encode), st.integers(1, 1000))
def test_partition_for_is_the_java_clients_partitioner(key, n_partitions):
    assert partition_for(key, n_partitions) == reference_partition(key, n_partitions)


@pytest.mark.parametrize("n_partitions", [1, 2, 3, 4, 12])
def test_the_cache_gives_what_the_hash_gives_for_many_ids_and_after_it_fills(n_partitions):
    cache = PartitionCache(n_partitions, capacity=500)
    item_ids = [f"i{k}" for k in range(1_200)] + ["é𝄞" * 30, ""]
    expected = [reference_partition(item.encode(), n_partitions) for item in item_ids]
    assert cache.many(item_ids) == expected
    assert [cache(item) for item in reversed(item_ids)] == expected[::-1]
