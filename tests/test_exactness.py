"""Exact under faults (issue 10), black-box through real workers and tansu: state that knows where it came
from, write groups applied whole, and a merging worker killed at any point losing no step."""

from __future__ import annotations

import shutil
import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

from infra.admin import TopicSpec, ensure_topics, topic_ids
from infra.broker import EmbeddedBroker
from infra.kafka_config import KafkaSettings
from models.windows import RING_DTYPE, encode_ring
from tests.streamkit import DAY_MS, Replay, by_step, make_events
from tests.test_stream_e2e import assert_counts_match_recount, last_step_end, wait_for_step

pytestmark = pytest.mark.broker


def count_then_kill(replay: Replay, events: list[dict]) -> None:
    """Start a worker, count `events` with it, then SIGKILL it."""
    worker = replay.start_worker()
    replay.wait_assigned()
    replay.produce(events)
    worker.wait_for(lambda s: s.get("counted", 0) >= len(events), 60, f"{len(events)} counted")
    worker.kill()


def recreate_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from infra.admin import admin_client

    client = admin_client(KafkaSettings(bootstrap=bootstrap))
    for future in client.delete_topics([topic], operation_timeout=10).values():
        future.result()
    deadline = time.monotonic() + 30
    while True:   # deletion is asynchronous: retry the creation until the old topic is gone
        try:
            ensure_topics(KafkaSettings(bootstrap=bootstrap), {topic: TopicSpec(partitions=partitions)})
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_a_re_created_input_topic_is_counted_from_its_start(make_replay, unique_topic, tmp_path):
    first, second = make_events(200, n_items=5, days=3, seed=31), make_events(200, n_items=5, days=3, seed=32)
    second = [{**event, "event_id": f"second-{event['event_id']}"} for event in second]   # other events
    replay = make_replay(unique_topic("recreate"), tmp_path, top_k=5)
    worker = replay.start_worker()
    replay.wait_assigned()
    replay.produce(first, envelope=1)
    worker.wait_for(lambda s: s.get("counted", 0) >= 200, 60, "the first incarnation counted")
    worker.stop()
    recreate_topic(replay.bootstrap, replay.topics["clicks"], replay.partitions)
    replay.produce(second, envelope=1)
    worker = replay.start_worker()
    status = worker.wait_for(lambda s: s.get("counted", 0) >= 200, 90, "the re-created topic counted")
    assert status["counted"] == 200 and status["redelivered_skipped"] == 0


def test_a_restarted_memory_broker_makes_the_worker_start_clean_and_say_so(tmp_path, unique_topic):
    events = make_events(300, n_items=5, days=3, seed=33)
    with EmbeddedBroker() as broker:
        port = broker.port
        replay = Replay(broker.bootstrap, unique_topic("membroker"), tmp_path, top_k=5)
        worker = replay.start_worker()
        replay.wait_assigned()
        replay.produce(events)
        worker.wait_for(lambda s: s.get("counted", 0) >= 300, 60, "counted before the broker restart")
        worker.kill()
    with EmbeddedBroker(port=port):
        worker = replay.start_worker()
        try:
            replay.wait_assigned()
            replay.produce(events[:100])
            status = worker.wait_for(lambda s: s.get("counted", 0) >= 100, 90, "counted after the broker restart")
        finally:
            worker.kill()
    assert status["counted"] == 100
    log = worker.log_tail(200_000)
    assert "starting clean" in log and "ConsistencyError" not in log
    assert list((tmp_path / "w1").glob("v1.stale-*"))


def test_an_incomplete_write_group_in_the_changelog_is_never_applied(make_replay, unique_topic, tmp_path):
    """A worker killed between two record batches of one write leaves records without their group end:
    recovery must drop them (here planted by hand: a forged ring and applied offset for every partition)."""
    events = make_events(400, n_items=6, days=20, seed=34)
    replay = make_replay(unique_topic("partial"), tmp_path, top_k=6)
    count_then_kill(replay, events[:200])
    changelog = f"{replay.name}-slot-counts-changelog"
    incarnation = topic_ids(KafkaSettings(bootstrap=replay.bootstrap), [replay.topics["clicks"]])
    forged_applied = f"m:applied:{incarnation[replay.topics['clicks']]}:".encode()
    slots = np.arange(events[0]["ts"] // DAY_MS, events[-1]["ts"] // DAY_MS + 1)
    ring = encode_ring(np.array(list(zip(slots, [999] * len(slots), strict=True)), dtype=RING_DTYPE))
    producer = Producer({"bootstrap.servers": replay.bootstrap})
    for partition in range(replay.partitions):   # records of a write whose group end never came
        producer.produce(changelog, ring, key=b"i:item-0", partition=partition)
        for source in range(replay.partitions):
            producer.produce(changelog, b"99999999", key=forged_applied + str(source).encode(), partition=partition)
    assert producer.flush(10) == 0
    worker = replay.start_worker()
    replay.produce(events[200:])
    records = wait_for_step(replay, last_step_end(events))
    worker.stop()
    assert_counts_match_recount(by_step(records), events)


def test_a_merging_worker_killed_at_random_moments_loses_no_step(make_replay, unique_topic, tmp_path):
    events = make_events(20_000, n_items=10, days=30, seed=35)
    replay = make_replay(unique_topic("mergekill"), tmp_path, top_k=10)
    worker = replay.start_worker()
    replay.wait_assigned()
    chunks = [events[i:i + 1000] for i in range(0, len(events), 1000)]
    for index, chunk in enumerate(chunks):
        replay.produce(chunk, envelope=10)
        if index in (4, 9, 14):   # killed while counting new input (the status counts this process's work)
            worker.wait_for(lambda s: s.get("counted", 0) > 0, 120, "counting new input")
            worker.kill()
            worker = replay.start_worker()
    records = wait_for_step(replay, last_step_end(events), timeout_s=180)
    replay.stop()
    steps = by_step(records)
    ends = sorted(steps)
    assert ends == list(range(ends[0], ends[-1] + DAY_MS, DAY_MS)), "a step is missing after the kills"
    assert ends[0] == (events[0]["ts"] // DAY_MS + 1) * DAY_MS
    assert_counts_match_recount(steps, events)
    first_copy: dict[str, bytes] = {}
    for record in records:   # a step emitted twice is the same records, with the same ids
        body = orjson.dumps({k: v for k, v in record.items() if k != "generated_at"}, option=orjson.OPT_SORT_KEYS)
        assert first_copy.setdefault(record["record_id"], body) == body


def test_a_worker_whose_local_state_is_lost_rebuilds_it_from_the_changelog(make_replay, unique_topic, tmp_path):
    """The recovery-hang regression: recovery that has to read changelog records must finish, exactly."""
    events = make_events(3000, n_items=8, days=20, seed=36)
    replay = make_replay(unique_topic("wiped"), tmp_path, top_k=8)
    count_then_kill(replay, events[:1500])
    shutil.rmtree(tmp_path / "w1" / "v1")
    worker = replay.start_worker()
    status = worker.wait_for(lambda s: s.get("assigned") and s.get("recovering") is False, 90, "recovered")
    assert status["counted"] == 0
    replay.produce(events[1500:])
    records = wait_for_step(replay, last_step_end(events))
    worker.stop()
    assert_counts_match_recount(by_step(records), events)
