"""`streams.batch_drain.BulkTopic`: the clicks topic's hand-over from the batch-drain consumer to its agent.

Pure asyncio (no broker): order, the take window, the bound that makes the consumer wait, and forgetting revoked
partitions. The worker's path through it (acks, commits, exact counts after a crash) is covered by the stream
tests (`test_exactness.py`, `test_stream_e2e.py`, `test_input_blackbox.py`), which run with the batch drain on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from streams.batch_drain import BulkTopic


@dataclass(frozen=True)
class Msg:
    tp: tuple[str, int]
    offset: int


def msgs(partition: int, start: int, n: int) -> list[Msg]:
    return [Msg(("clicks", partition), start + i) for i in range(n)]


def test_take_returns_waiting_lists_in_order_up_to_max_messages():
    async def scenario():
        bulk = BulkTopic("clicks", max_messages=5)
        await bulk.put(msgs(0, 0, 2))
        await bulk.put(msgs(1, 0, 3))
        await bulk.put(msgs(0, 2, 4))
        first = await bulk.take(within_s=0.0)
        second = await bulk.take(within_s=0.0)
        return first, second, bulk.n_waiting

    first, second, left = asyncio.run(scenario())
    assert first == msgs(0, 0, 2) + msgs(1, 0, 3)   # two whole lists fit in 5
    assert second == msgs(0, 2, 4) and left == 0


def test_a_list_larger_than_max_messages_is_taken_whole():
    async def scenario():
        bulk = BulkTopic("clicks", max_messages=3)
        await bulk.put(msgs(0, 0, 4))
        return await bulk.take(within_s=0.0)

    assert asyncio.run(scenario()) == msgs(0, 0, 4)


def test_take_waits_for_the_first_list_then_up_to_the_window_for_more():
    async def scenario():
        bulk = BulkTopic("clicks", max_messages=100)
        taker = asyncio.create_task(bulk.take(within_s=0.2))
        await asyncio.sleep(0.05)
        assert not taker.done()           # nothing arrived yet: it waits
        await bulk.put(msgs(0, 0, 1))
        await asyncio.sleep(0.05)
        await bulk.put(msgs(0, 1, 1))     # inside the window: taken with the first
        return await asyncio.wait_for(taker, 2.0)

    assert asyncio.run(scenario()) == msgs(0, 0, 2)


def test_take_does_not_wait_for_the_window_when_max_messages_are_waiting():
    async def scenario():
        bulk = BulkTopic("clicks", max_messages=2)
        await bulk.put(msgs(0, 0, 2))
        loop = asyncio.get_running_loop()
        started = loop.time()
        taken = await bulk.take(within_s=5.0)
        return taken, loop.time() - started

    taken, waited = asyncio.run(scenario())
    assert taken == msgs(0, 0, 2) and waited < 1.0


def test_put_waits_while_twice_max_messages_are_waiting_and_resumes_after_a_take():
    async def scenario():
        bulk = BulkTopic("clicks", max_messages=2)
        await bulk.put(msgs(0, 0, 2))
        await bulk.put(msgs(0, 2, 2))             # 4 waiting: full
        putter = asyncio.create_task(bulk.put(msgs(0, 4, 1)))
        await asyncio.sleep(0.05)
        blocked = not putter.done()
        await bulk.take(within_s=0.0)
        await asyncio.wait_for(putter, 2.0)
        rest = [await bulk.take(within_s=0.0), await bulk.take(within_s=0.0)]
        return blocked, rest

    blocked, rest = asyncio.run(scenario())
    assert blocked
    assert rest == [msgs(0, 2, 2), msgs(0, 4, 1)]


def test_forget_drops_waiting_messages_of_revoked_partitions_only():
    async def scenario():
        bulk = BulkTopic("clicks", max_messages=100)
        await bulk.put(msgs(0, 0, 2) + msgs(1, 0, 2))
        await bulk.put(msgs(1, 2, 3))
        bulk.forget({("clicks", 1)})
        waiting = bulk.n_waiting
        return waiting, await bulk.take(within_s=0.0)

    waiting, taken = asyncio.run(scenario())
    assert waiting == 2 and taken == msgs(0, 0, 2)
