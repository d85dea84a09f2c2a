"""The worker's two consumer loops over the embedded broker: the batch drain (the default; clicks reach their
agent in bulk, `streams.batch_drain`) and faust's own (`--no-batch-drain`: per-message events, the stream and
take_events). Counts against a recount, and the input offsets the group commits.
"""

from __future__ import annotations

import time

import pytest

from tests.streamkit import Replay, make_events
from tests.test_stream_e2e import test_trend_records_validate_and_counts_equal_a_recount as recount_case

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]
LOOPS = {"batch-drain": (), "faust": ("--no-batch-drain",)}


def test_faust_own_loop_gives_records_equal_to_a_recount(make_replay, unique_topic, tmp_path):
    recount_case(make_replay, unique_topic, tmp_path, consumer_args=LOOPS["faust"])


def committed_messages(replay: Replay) -> int:
    """Sum over the clicks partitions of the offsets the worker group committed (the topic starts at 0)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": replay.bootstrap, "group.id": replay.name,
                         "enable.auto.commit": False, "log_level": 2})
    try:
        partitions = [TopicPartition(replay.topics["clicks"], p) for p in range(replay.partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


@pytest.mark.parametrize("consumer_loop", sorted(LOOPS))
def test_the_worker_commits_its_input_offsets_up_to_what_it_counted(make_replay, unique_topic, tmp_path,
                                                                    consumer_loop):
    """Counts stay exact even without commits (stage 2 skips applied offsets), so this checks the commits
    themselves: every clicks message acked by the agent (in bulk with the batch drain) gets committed."""
    events = make_events(3000, n_items=20, days=10, seed=3)
    replay = make_replay(unique_topic("commit"), tmp_path, top_k=5)
    replay.extra_args = list(LOOPS[consumer_loop])
    replay.start_worker()
    replay.wait_assigned()
    replay.produce(events, envelope=1)
    replay.wait_counted(len(events))
    deadline = time.monotonic() + 60
    while (committed := committed_messages(replay)) < len(events) and time.monotonic() < deadline:
        time.sleep(0.5)
    replay.stop()
    assert committed == len(events)
