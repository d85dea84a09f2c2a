"""Cluster administration over confluent-kafka's AdminClient: metadata probes and explicit topic creation.

Owns: asking a cluster for its metadata (used to tell when a broker is ready and which broker it is),
and ``ensure_topics``, which creates topics with the partition counts and compaction asked for.
Tansu auto-creates unknown topics with 4 partitions (even on a metadata request naming the topic) and
never compacts, so topics are created explicitly before anything produces to them, and existence is
checked by listing *all* topics (a metadata request naming a topic would auto-create it on tansu).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, ConfigResource, NewTopic, ResourceType

from infra.errors import BrokerUnreachable, TrailError
from infra.kafka_config import KafkaSettings

_QUIET = {"log_level": 0, "reconnect.backoff.max.ms": 200}   # no librdkafka chatter while probing


class TopicError(TrailError):
    """A topic exists with a layout other than the one asked for, or could not be created."""


@dataclass(frozen=True)
class TopicSpec:
    """How a topic must look: partition count, compaction, replication (-1: the broker's default)."""

    partitions: int
    compact: bool = False
    replication_factor: int = -1
    config: dict[str, str] = field(default_factory=dict)

    def topic_config(self) -> dict[str, str]:
        return {**({"cleanup.policy": "compact"} if self.compact else {}), **self.config}


def admin_client(settings: KafkaSettings) -> AdminClient:
    """An AdminClient for ``settings`` that keeps librdkafka's connection logging quiet."""
    return AdminClient({**_QUIET, **settings.confluent()})


def cluster_metadata(settings: KafkaSettings, timeout: float = 5.0) -> ClusterMetadata:
    """One Metadata request for all topics; raises KafkaException if the cluster does not answer in time."""
    return admin_client(settings).list_topics(timeout=timeout)


def require_broker(settings: KafkaSettings, timeout: float = 5.0) -> ClusterMetadata:
    """The cluster's metadata, or BrokerUnreachable saying where it looked and how to start one."""
    try:
        return cluster_metadata(settings, timeout)
    except KafkaException as exc:
        raise BrokerUnreachable(
            f"no Kafka broker answers at {settings.bootstrap} ({exc.args[0].str() if exc.args else exc}); start "
            "the embedded one with `trail broker --detach`, or pass --bootstrap HOST:PORT "
            "(or set TRAIL_BOOTSTRAP)") from exc


def ensure_topics(settings: KafkaSettings, topics: Mapping[str, TopicSpec],
                  timeout: float = 30.0) -> list[str]:
    """Create the missing topics; check the existing ones. Returns the names created by this call.

    Idempotent: an existing topic with the right partition count is fine. A partition-count mismatch,
    or a topic that should be compacted but is not, raises TopicError naming both layouts.
    """
    client = admin_client(settings)
    existing = client.list_topics(timeout=timeout).topics
    missing = {name: spec for name, spec in topics.items() if name not in existing}
    created = _create_topics(client, missing, timeout)
    if created != list(missing):                      # someone else created some meanwhile: re-read
        existing = client.list_topics(timeout=timeout).topics
    for name, spec in topics.items():
        if name not in created:
            _check_partitions(name, spec, len(existing[name].partitions))
    _check_compaction(client, {n: s for n, s in topics.items() if s.compact and n not in created}, timeout)
    return created


def _create_topics(client: AdminClient, topics: Mapping[str, TopicSpec], timeout: float) -> list[str]:
    """CreateTopics for ``topics``; returns those this call created (already-exists is not an error)."""
    if not topics:
        return []
    new = [NewTopic(name, num_partitions=spec.partitions, replication_factor=spec.replication_factor,
                    config=spec.topic_config()) for name, spec in topics.items()]
    futures = client.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicError(f"could not create topic {name!r}: {exc.args[0].str()}") from exc
    return [name for name in topics if name in created]


def _check_partitions(name: str, spec: TopicSpec, actual: int) -> None:
    if actual != spec.partitions:
        raise TopicError(
            f"topic {name!r} exists with {actual} partitions but {spec.partitions} are required "
            "(partitions decide which worker owns which keys; delete and recreate the topic, "
            "or configure the expected count)")


def _check_compaction(client: AdminClient, topics: Mapping[str, TopicSpec], timeout: float) -> None:
    if not topics:
        return
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in topics]
    for resource, future in client.describe_configs(resources, request_timeout=timeout).items():
        entry = future.result().get("cleanup.policy")
        policy = entry.value if entry is not None and entry.value else "delete"
        if "compact" not in policy.split(","):
            raise TopicError(f"topic {resource.name!r} exists with cleanup.policy={policy} but must be "
                             "compacted (cleanup.policy=compact)")


def topic_ids(settings: KafkaSettings, names: list[str], timeout: float = 10.0) -> dict[str, str]:
    """Each existing topic's id (a new id each time a topic is created: it tells incarnations apart)."""
    from confluent_kafka import TopicCollection

    client = admin_client(settings)   # held until the futures resolve: a destroyed handle fails them
    futures = client.describe_topics(TopicCollection(list(names)), request_timeout=timeout)
    ids = {}
    for name, future in futures.items():
        try:
            ids[name] = str(future.result().topic_id)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
    return ids


def rewind_group(settings: KafkaSettings, group: str, topic: str, partitions: int, timeout: float = 10.0) -> None:
    """Set `group`'s committed offsets on every partition of `topic` to 0 (the group must have no members)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, 0) for p in range(partitions)])
    client = admin_client(settings)
    for future in client.alter_consumer_group_offsets([request], request_timeout=timeout).values():
        future.result()
