"""A faust consumer that hands each fetched batch to the conductor under one flow-control wait, not one per message.

faust's `Consumer._drain_messages` wraps every message's delivery in `Service.wait_first(callback(message),
suspend_flow.wait())`: four asyncio tasks and an `asyncio.wait` per message, ~20 % of a single-event worker's
time (py-spy, README "Benchmarks"). `BatchDrainConsumer` keeps that loop's logic (read offsets, offset gaps,
commit-every, yielding to the event loop every 100 messages) but delivers a whole `getmany` batch inside one
`wait_first`: when the flow is suspended (a rebalance), the stopped or crashed, the batch's delivery is
cancelled where it stands and the undelivered messages keep their read offsets unset, so they are fetched
again, never skipped. Faust agents, streams, acks and the commit path are unchanged.

The clicks topic goes further (`BulkTopic`): its messages skip the conductor, the channel queue, the stream
and its take buffer (faust's per-message Event, queue put, stream step and ack: ~30 % of a single-event worker's
time, py-spy, docs/benchmarks.md) and reach the clicks agent as lists of faust Messages, tracked when the agent
takes them and acked after its body returned for them, through the consumer's own bookkeeping
(`track_message`, `Consumer.ack`), so the committed offsets move as faust's stream would move them.

Owns only this loop and the hand-over; installed by `streams.runner.run_worker` when `WorkerConfig.batch_drain`
is on (the default; `trail worker --no-batch-drain` keeps faust's loop). No window, state or scoring logic here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

YIELD_EVERY = 100   # messages between `sleep(0)`s, as faust's loop does
BULK_ATTRIBUTE = "trail_bulk_topic"   # on the app: the BulkTopic the consumer hands the clicks topic to


class BatchDrainConsumer(AIOKafkaConsumer):
    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs inside the worker
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                batch = [pair async for pair in self.getmany(timeout=1.0)]
                await asyncio.sleep(0)   # getmany may return at once many times in a row
                if batch and not self.should_stop:
                    await self.wait_first(self._deliver(batch), self.suspend_flow.wait())
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _deliver(self, batch: list) -> None:
        """faust's per-message body, for a whole batch: gap bookkeeping, commit-every, deliver, read offset.
        Messages of the bulk topic are handed to it as lists; their read offsets move when a list is handed
        over, so a delivery cancelled before that leaves them unread, as faust's loop would."""
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        bulk: BulkTopic | None = getattr(self.app, BULK_ATTRIBUTE, None)
        bulk_topic = bulk.topic if bulk is not None else None
        taken: list = []
        taken_upto: dict = {}   # tp -> last offset in `taken` (its read offset once handed over)
        since_yield = 0
        for tp, message in batch:
            since_yield += 1
            if since_yield > YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            offset = message.offset
            r_offset = taken_upto[tp] if tp in taken_upto else read_offset[tp]
            if r_offset is not None and offset < r_offset:
                continue   # faust drops messages behind the read offset (re-fetched after a seek)
            if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            if message.topic == bulk_topic:
                taken.append(message)
                taken_upto[tp] = offset
                if len(taken) >= bulk.max_messages:
                    await self._hand_over(bulk, taken, taken_upto)
                    taken, taken_upto = [], {}
                continue
            await callback(message)
            read_offset[tp] = offset
        if taken:
            await self._hand_over(bulk, taken, taken_upto)

    async def _hand_over(self, bulk: BulkTopic, messages: list, upto: dict) -> None:
        await bulk.put(messages)
        self._read_offset.update(upto)


class BulkTopic:
    """The clicks topic's hand-over from the consumer to its agent: lists of faust Messages, bounded to
    `2 * max_messages` waiting (the consumer waits when it is full, as on a full channel queue)."""

    def __init__(self, topic: str, max_messages: int) -> None:
        self.topic = topic
        self.max_messages = max_messages
        self.waiting: deque[list] = deque()
        self.n_waiting = 0
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    async def put(self, messages: list) -> None:
        while self.n_waiting >= 2 * self.max_messages:
            self.room.clear()
            await self.room.wait()
        self.waiting.append(messages)
        self.n_waiting += len(messages)
        self.arrived.set()

    async def take(self, within_s: float) -> list:
        """Waiting messages, oldest first, whole lists up to `max_messages` (one list may be more): once one has
        arrived, waits up to `within_s` for more unless `max_messages` are already waiting (take_events' window)."""
        while not self.waiting:
            self.arrived.clear()
            await self.arrived.wait()
        deadline = asyncio.get_running_loop().time() + within_s
        while self.n_waiting < self.max_messages:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                break
        taken = self.waiting.popleft()
        while self.waiting and len(taken) + len(self.waiting[0]) <= self.max_messages:
            taken = taken + self.waiting.popleft()
        self.n_waiting -= len(taken)
        self.room.set()
        return taken

    def forget(self, partitions: set) -> None:
        """Drop waiting messages of revoked partitions (faust clears its channel queues likewise)."""
        kept = [[m for m in messages if m.tp not in partitions] for messages in self.waiting]
        self.waiting = deque(messages for messages in kept if messages)
        self.n_waiting = sum(len(messages) for messages in self.waiting)
        self.room.set()


def install_batch_drain(app: Any, bulk: BulkTopic | None = None) -> None:
    """Make `app` create its consumer as a BatchDrainConsumer (call before the worker starts); `bulk`: the
    topic whose messages go to its agent as lists (the agent must read `bulk`, not its stream)."""
    app.transport.Consumer = BatchDrainConsumer
    setattr(app, BULK_ATTRIBUTE, bulk)


def track_live_messages(app: Any, messages: list) -> list:
    """The messages fetched under the current assignment, while the flow runs, now tracked as in progress
    (a rebalance or a graceful stop waits for their acks, as for an event a stream took). The others are left
    untracked and unacked: faust's stream skips them the same way, and the seek to the committed offsets that
    follows an assignment fetches them again."""
    if not app.flow_control.is_active():
        return []
    generation = app.consumer_generation_id
    live = [message for message in messages if message.generation_id == generation]
    track = app.consumer.track_message
    for message in live:
        track(message)
    return live
