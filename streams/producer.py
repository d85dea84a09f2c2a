"""Producer helper for services and `trail produce`: click events in envelopes, grouped by item partition.

Events are grouped so each envelope holds only items of one partition (same murmur2 key->partition rule
as the worker), then sent as JSON arrays with confluent-kafka. The item catalogue goes to the compacted
`items` topic keyed by item id. No window or scoring logic here.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping

import orjson
from confluent_kafka import KafkaException, Producer

from infra.kafka_config import KafkaSettings
from streams.partitioning import PartitionCache

PRODUCER_DEFAULTS = {
    "partitioner": "murmur2_random",   # Java clients' default: keyed events land where the worker routes them
    "linger.ms": 20,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "compression.type": "none",
    "enable.idempotence": False,
}


class ClickProducer:
    """Buffered producer of click events; `send` many, `flush` at the end (or use as a context manager)."""

    def __init__(self, settings: KafkaSettings, topic: str, n_partitions: int, envelope: int = 100) -> None:
        self.producer = Producer({**PRODUCER_DEFAULTS, **settings.confluent()})
        self.topic = topic
        self.envelope = envelope
        self.partition_of = PartitionCache(n_partitions)
        self.pending: dict[int, list[dict]] = defaultdict(list)
        self.sent_events = 0
        self.errors: list[str] = []

    def __enter__(self) -> ClickProducer:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def send(self, event: Mapping) -> None:
        partition = self.partition_of(str(event["item_id"]))
        if self.envelope <= 1:
            self._produce(orjson.dumps(event), partition, str(event["item_id"]).encode(), 1)
            return
        group = self.pending[partition]
        group.append(event)
        if len(group) >= self.envelope:
            self._send_group(partition)

    def send_raw(self, value: bytes) -> None:
        """Send bytes as one message, unvalidated (a bad line still reaches the worker and its DLQ)."""
        self._produce(value, self.partition_of(""), None, 1)

    def send_many(self, events: Iterable[Mapping]) -> None:
        for event in events:
            self.send(event)

    def _send_group(self, partition: int) -> None:
        group = self.pending.pop(partition, [])
        if group:
            self._produce(orjson.dumps(group), partition, None, len(group))

    def _produce(self, value: bytes, partition: int, key: bytes | None, n_events: int) -> None:
        on_delivery = functools.partial(self._delivered, n_events)
        while True:
            try:
                self.producer.produce(self.topic, value, key=key, partition=partition, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka drain
                self.producer.poll(0.05)
        self.producer.poll(0)

    def _delivered(self, n_events: int, err, msg) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            self.sent_events += n_events

    def flush(self, timeout_s: float = 60.0) -> None:
        """Send what is buffered and wait for delivery; raises if anything failed."""
        for partition in list(self.pending):
            self._send_group(partition)
        remaining = self.producer.flush(timeout_s)
        if remaining or self.errors:
            raise KafkaException(f"{remaining} messages undelivered, errors: {self.errors[:3]}")


def produce_items(settings: KafkaSettings, topic: str, items: Mapping[str, str]) -> int:
    """Write the catalogue (item id -> text) to the compacted items topic, keyed by item id."""
    producer = Producer({**PRODUCER_DEFAULTS, **settings.confluent()})
    for item_id, text in items.items():
        producer.produce(topic, orjson.dumps({"item_id": item_id, "text": text}), key=item_id.encode())
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        raise KafkaException(f"{remaining} catalogue records undelivered to {topic}")
    return len(items)
