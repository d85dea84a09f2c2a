"""Stage 1 of the worker: click messages in, deltas out, and idle declarations for quiet input partitions.

`StageOne` is a part of `streams.app.Pipeline` (which holds the state it reads: the app, config, router,
counters, the per-source bookkeeping); split out so each module reads as one stage. Routing, validation and
pre-aggregation are pure (`streams.deltas`, `streams.events`); this module owns their Kafka side.
"""

from __future__ import annotations

import asyncio
import time

from streams.deltas import RoutedBatch, encode_deltas, encode_idle, encode_rejections, rejections_target
from streams.events import dlq_record, latest_acceptable_ts_ms
from streams.table_store import committed_next_offset

INGEST_CHUNK_BYTES = 1 << 20   # input routed and sent per chunk of about this many bytes (1 MiB)


def chunks_of_bytes(messages: list[tuple[int, int, bytes | None]], limit: int
                    ) -> list[list[tuple[int, int, bytes | None]]]:
    """Consecutive runs of `messages` (order kept, none empty) whose values add up to about `limit` bytes
    (a run ends with the message that reaches it)."""
    chunks, start, size = [], 0, 0
    for k, (_, _, value) in enumerate(messages):
        size += len(value) if value else 0
        if size >= limit:
            chunks.append(messages[start:k + 1])
            start, size = k + 1, 0
    if start < len(messages):
        chunks.append(messages[start:])
    return chunks


class StageOne:
    """Stage 1 bodies of `Pipeline`: `ingest` (the clicks agent) and `declare_idle_sources` (a timer)."""

    async def ingest(self, messages: list[tuple[int, int, bytes | None]]) -> None:
        if not self.counters.first_input_at:
            self.counters.first_input_at = time.time()
        now, read_at = time.monotonic(), time.time()
        for source, _, _ in messages:
            self.source_heard_at[source] = now
            self.idle_declared.pop(source, None)
        max_ts_ms = latest_acceptable_ts_ms(self.config.max_future_s)
        sends, batches = [], []
        for chunk in chunks_of_bytes(messages, INGEST_CHUNK_BYTES):
            batch = self.router.route(chunk, max_ts_ms, self.config.min_ts_ms)
            sends += await self._send_routed(batch)
            batches.append(batch)
            # lets the producer's sender write this chunk's deltas before the next is routed (no speed change
            # was measured; the chunks are there to bound what one route call builds)
            await asyncio.sleep(0)
        await asyncio.gather(*sends)
        for batch in batches:
            self._trace_crossings(batch.watermarks, read_at)
            self.counters.events += batch.events
            self.counters.duplicates += batch.duplicates
        for source, offset, _ in messages:
            if offset >= self.source_read_upto.get(source, 0):
                self.source_read_upto[source] = offset + 1

    async def _send_routed(self, batch: RoutedBatch) -> list[asyncio.Future]:
        """Send a routed batch's deltas messages, then its DLQ records; the futures of their acks."""
        sends = []
        for source, watermark in batch.watermarks.items():
            for target in range(self.config.partitions):
                for value in encode_deltas(source, watermark, batch.deltas.get((source, target))):
                    sends.append(await self._send_deltas(target, value))
        for source, rejected in self._dlq_records(batch).items():
            # after the source's deltas: this message's watermark must not reach its target before them
            target = rejections_target(source, self.config.partitions)
            for value in encode_rejections(source, batch.watermarks[source], rejected):
                sends.append(await self._send_deltas(target, value))
        return sends

    async def _send_deltas(self, target: int, value: bytes):
        headers = self.internal_keys.headers(self.config.deltas_topic, target, None, value)
        return await self.app.producer.send(self.config.deltas_topic, None, value, target, None, headers)

    def _dlq_records(self, batch) -> dict[int, list[tuple[int, bytes]]]:
        """Source partition -> its rejected input as (offset, DLQ record), in offset order. The owner of
        `rejections_target(source)` publishes them, once (`PartitionState` guards them like deltas)."""
        by_source: dict[int, list[tuple[int, bytes]]] = {}
        for source, offset, rejection in batch.rejections:
            record = dlq_record(rejection, self.config.topics.clicks, source, offset)
            by_source.setdefault(source, []).append((offset, record))
        return by_source

    def _trace_crossings(self, watermarks: dict[int, int], read_at: float) -> None:
        """Step trace: the boundaries each source's sent watermark crossed with this batch (read at `read_at`)."""
        for source, watermark in watermarks.items():
            slot = self.config.spec.watermark_slot(watermark)
            previous = self.stage1_slots.get(source)
            if previous is None or slot > previous:
                self.stage1_slots[source] = slot
                self.step_trace.mark_crossed(previous, slot, "stage1_read", read_at)
                self.step_trace.mark_crossed(previous, slot, "stage1_sent")

    async def declare_idle_sources(self) -> None:
        """Declare idle every input partition this worker reads that it has processed to its end and that sent
        nothing for --source-idle-timeout-s (Flink's withIdleness, but never while a backlog is read). Repeated
        every timeout while it stays idle, so a partition state rebuilt after a rebalance learns it too.

        "Processed to its end" compares the offset after the last message whose deltas were sent (or the
        committed offset, for a partition with nothing new since it was assigned) with the end offset asked
        of the broker now. The consumer's cached highwater and position are not enough: faust fetches ahead
        of the agent, and a new owner declared a backlog idle before reading it (its events then came late).
        """
        timeout_s = self.config.idle_declare_after_s
        if timeout_s <= 0:
            return
        now = time.monotonic()
        consumer = self.app.consumer
        candidates = [tp for tp in list(consumer.assignment())
                      if tp.topic == self.config.topics.clicks
                      and now - self.idle_declared.get(tp.partition, -timeout_s) >= timeout_s
                      and now - self.source_heard_at.get(tp.partition, self.started_at) >= timeout_s]
        if candidates:
            async with self.idle_lock:
                await self._declare_idle(candidates, now)

    async def _declare_idle(self, candidates: list, now: float) -> None:
        consumer = self.app.consumer
        try:
            ends = await consumer.highwaters(*candidates)
        except Exception:  # noqa: BLE001 - broker busy or a rebalance meanwhile: ask again next time
            return
        for tp in candidates:
            source = tp.partition
            if tp not in consumer.assignment() or ends.get(tp) is None:
                continue   # revoked meanwhile: not ours to declare
            processed = max(self.source_read_upto.get(source, 0), committed_next_offset(consumer, tp))
            if processed < ends[tp]:
                continue   # unprocessed messages: a backlog, not an idle partition
            watermark = self.router.max_ts_ms.get(source, -1)
            declaration = encode_idle(source, watermark, ends[tp])
            for target in range(self.config.partitions):
                await self.send_internal(self.config.deltas_topic, declaration, target)
            self.idle_declared[source] = now
