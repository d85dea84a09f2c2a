"""Reading trend v1 records back from the trending topic: every partition from the start or the end (assign,
no consumer group), and the first sighting of each `record_id` (a step re-emitted after a crash repeats them).

Used by `trail tail`, `trail demo`, the chaos run and tests. No printing here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

import orjson

from infra.admin import require_broker
from infra.errors import CommandError


def read_records(settings, topic: str, from_beginning: bool, max_records: int = 0, idle_exit_s: float = 0.0):
    """Yield decoded records from every partition of `topic` (assign, not subscribe: no group rebalance)."""
    import time

    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    require_broker(settings)
    consumer = Consumer({**settings.confluent(), "group.id": "trail-tail", "enable.auto.commit": False,
                         "log_level": 2})   # a broker that goes away later: one line per cause, not a flood
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise CommandError(f"topic {topic!r} not found on {settings.bootstrap}; is a worker running?")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in metadata.topics[topic].partitions])
        seen, last_at = 0, time.monotonic()
        while not max_records or seen < max_records:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                if idle_exit_s and time.monotonic() - last_at > idle_exit_s:
                    return
                continue
            last_at = time.monotonic()
            seen += 1
            yield orjson.loads(message.value())
    finally:
        consumer.close()


def first_sightings(records: Iterable[dict], capacity: int = 1_000_000) -> Iterator[dict]:
    """Records whose `record_id` was not seen among the last `capacity` ids (records without one pass)."""
    seen: OrderedDict[str, None] = OrderedDict()
    for record in records:
        record_id = record.get("record_id")
        if record_id is not None:
            if record_id in seen:
                continue
            seen[record_id] = None
            if len(seen) > capacity:
                seen.popitem(last=False)
        yield record
