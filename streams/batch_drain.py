"""A faust consumer that hands each fetched batch to the conductor under one flow-control wait, not one per message.

faust's `Consumer._drain_messages` wraps every message's delivery in `Service.wait_first(callback(message),
suspend_flow.wait())`: four asyncio tasks and an `asyncio.wait` per message, ~20 % of a single-event worker's
time (py-spy, README "Benchmarks"). `BatchDrainConsumer` keeps that loop's logic (read offsets, offset gaps,
commit-every, yielding to the event loop every 100 messages) but delivers a whole `getmany` batch inside one
`wait_first`: when the flow is suspended (a rebalance), the stopped or crashed, the batch's delivery is
cancelled where it stands and the undelivered messages keep their read offsets unset, so they are fetched
again, never skipped. Faust agents, streams, acks and the commit path are unchanged.

Owns only this loop; installed by `streams.runner.run_worker` when `WorkerConfig.batch_drain` is on (the
default; `trail worker --no-batch-drain` keeps faust's loop). No window, state or scoring logic here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

YIELD_EVERY = 100   # messages between `sleep(0)`s, as faust's loop does


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
        """faust's per-message body, for a whole batch: gap bookkeeping, commit-every, deliver, read offset."""
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        since_yield = 0
        for tp, message in batch:
            since_yield += 1
            if since_yield > YIELD_EVERY:
                await asyncio.sleep(0)
                since_yield = 0
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is not None and offset < r_offset:
                continue   # faust drops messages behind the read offset (re-fetched after a seek)
            if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            await callback(message)
            read_offset[tp] = offset


def install_batch_drain(app: Any) -> None:
    """Make `app` create its consumer as a BatchDrainConsumer (call before the worker starts)."""
    app.transport.Consumer = BatchDrainConsumer
