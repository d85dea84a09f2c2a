"""The topics a worker needs, with their partition counts and cleanup policies (created explicitly:
the embedded broker auto-creates 4 partitions and never compacts)."""

from __future__ import annotations

from infra.admin import TopicSpec, ensure_topics
from streams.config import WorkerConfig


def worker_topics(config: WorkerConfig) -> dict[str, TopicSpec]:
    n = config.partitions
    t = config.topics
    app = config.app_id
    return {
        t.clicks: TopicSpec(partitions=n),
        t.items: TopicSpec(partitions=n, compact=True),
        t.dlq: TopicSpec(partitions=1),
        t.trending: TopicSpec(partitions=1),
        config.deltas_topic: TopicSpec(partitions=n),
        config.candidates_topic: TopicSpec(partitions=1),
        f"{app}-{config.table_name}-changelog": TopicSpec(partitions=n, compact=True),
        f"{app}-items-changelog": TopicSpec(partitions=n, compact=True),
        f"{app}-merge-changelog": TopicSpec(partitions=1, compact=True),
    }


def ensure_worker_topics(config: WorkerConfig) -> None:
    ensure_topics(config.kafka, worker_topics(config))
