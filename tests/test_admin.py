"""ensure_topics against the embedded broker: explicit partitions, compaction, idempotence, mismatches."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import ConfigResource, ResourceType

from infra.admin import TopicError, TopicSpec, admin_client, ensure_topics
from infra.kafka_config import KafkaSettings

pytestmark = pytest.mark.broker


def partition_counts(settings: KafkaSettings) -> dict[str, int]:
    topics = admin_client(settings).list_topics(timeout=10).topics
    return {name: len(meta.partitions) for name, meta in topics.items()}


def cleanup_policy(settings: KafkaSettings, topic: str) -> str:
    resource = ConfigResource(ResourceType.TOPIC, topic)
    client = admin_client(settings)              # keep the client alive until the future resolves
    configs = client.describe_configs([resource])[resource].result()
    return configs["cleanup.policy"].value


def test_creates_topics_with_partitions_and_compaction(broker, unique_topic):
    settings = KafkaSettings(broker, {})
    events, catalogue = unique_topic("clicks"), unique_topic("items")
    created = ensure_topics(settings, {events: TopicSpec(partitions=6),
                                       catalogue: TopicSpec(2, compact=True)})
    assert created == [events, catalogue]
    counts = partition_counts(settings)
    assert (counts[events], counts[catalogue]) == (6, 2)     # not tansu's auto-created 4
    assert cleanup_policy(settings, catalogue) == "compact"


def test_is_idempotent(broker, unique_topic):
    settings = KafkaSettings(broker, {})
    topics = {unique_topic("a"): TopicSpec(3), unique_topic("b"): TopicSpec(1, compact=True)}
    assert ensure_topics(settings, topics) == list(topics)
    assert ensure_topics(settings, topics) == []
    new = unique_topic("c")
    assert ensure_topics(settings, {**topics, new: TopicSpec(2)}) == [new]


def test_partition_count_mismatch_is_an_error(broker, unique_topic):
    settings = KafkaSettings(broker, {})
    topic = unique_topic()
    producer = Producer({"bootstrap.servers": broker})
    producer.produce(topic, b"x")                           # tansu auto-creates it with 4 partitions
    assert producer.flush(10) == 0
    with pytest.raises(TopicError, match=rf"{topic}' exists with 4 partitions but 2 are required"):
        ensure_topics(settings, {topic: TopicSpec(2)})


def test_missing_compaction_is_an_error(broker, unique_topic):
    settings = KafkaSettings(broker, {})
    topic = unique_topic()
    ensure_topics(settings, {topic: TopicSpec(2)})
    with pytest.raises(TopicError, match="must be compacted"):
        ensure_topics(settings, {topic: TopicSpec(2, compact=True)})
