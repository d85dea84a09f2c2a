"""The Faust app: topics, tables and four thin agents that delegate to the pure modules.

One click's path: `count_clicks` (stage 1: decode, validate, DLQ, de-duplicate, pre-aggregate,
`streams.deltas`) -> internal deltas topic, routed to the item's partition -> `apply_deltas` (stage 2:
`streams.state` adds the deltas to the item's ring, written once per message to RocksDB and its
changelog) -> when the watermark crosses a slot boundary, the partition's top-K candidates
(`streams.scoring_loop`) -> `merge_partitions` (one partition) -> global top-K trend v1 records on
`trending-items`.

Table writes bypass faust's per-key `table[key] = value` path (one changelog send through a 100-entry
buffer per key, ~100x slower): each batch multi-gets the old values, sends the changelog records with
an explicit partition, waits for their acks, then writes one RocksDB WriteBatch and records the
persisted changelog offset, as faust's own `_on_changelog_sent` does. Acks before the local write keep
recovery exact: a crash leaves the changelog ahead of the store, never behind it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

import faust
import orjson
import rocksdict
from faust.types import TP

from streams.config import WorkerConfig
from streams.deltas import DeltaRouter, decode_deltas, encode_deltas
from streams.events import dlq_record, latest_acceptable_ts_ms
from streams.scorer_runtime import ScorerRuntime
from streams.scoring_loop import (
    features_at,
    grounded_explanations,
    merge_top_k,
    partition_candidates,
    trend_records,
)
from streams.state import PartitionState, StateUpdate

log = logging.getLogger("trail.worker")


@dataclass
class Counters:
    events: int = 0
    counted: int = 0             # events added to the table (stage 2)
    catalogue_items: int = 0     # item records stored from the items topic
    dlq: int = 0
    duplicates: int = 0
    late: int = 0
    redelivered_skipped: int = 0
    steps_scored: int = 0
    trends_emitted: int = 0
    explanations_generated: int = 0  # explanations written by the TRAIL scorer (checked before publishing)
    explanations_replaced: int = 0   # of those, failed the faithfulness check: the template was published
    started_at: float = field(default_factory=time.time)
    first_input_at: float = 0.0      # wall time of the first clicks batch (benchmarks time from here)
    last_counted_at: float = 0.0     # wall time of the last table write

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def catalogue_text(value: bytes | None) -> str:
    """The text of an items-topic record ({"item_id", "text"|"title"}); "" when absent or unreadable."""
    if not value:
        return ""
    try:
        record = orjson.loads(value)
        return str(record.get("text") or record.get("title") or "")
    except (orjson.JSONDecodeError, AttributeError):
        return ""


def create_app(config: WorkerConfig, runtime: ScorerRuntime) -> faust.App:
    app = faust.App(
        config.app_id,
        broker=config.kafka.faust_broker_url(),
        broker_credentials=config.kafka.faust_credentials(),
        store="rocksdb://",
        datadir=str(config.data_dir / config.worker_id),
        topic_partitions=config.partitions,
        topic_allow_declare=False,        # topics are created explicitly (infra.admin)
        web_enabled=False,
        broker_session_timeout=10,        # tansu holds JoinGroup for session_timeout / 2
        broker_max_poll_records=20_000,
        consumer_auto_offset_reset="earliest",
        producer_linger_ms=5,
        producer_max_batch_size=512 * 1024,   # changelog writes go out as whole record batches
        table_cleanup_interval=3600,
    )
    app.conf.broker_commit_every = 10_000
    pipeline = Pipeline(app, config, runtime)
    app.trail_pipeline = pipeline  # reachable from tests and the status file

    @app.agent(pipeline.clicks_topic)
    async def count_clicks(stream):
        async for events in stream.take_events(config.batch_max_messages, within=config.batch_within_s):
            await pipeline.ingest([(e.message.partition, e.message.offset, e.message.value) for e in events])

    @app.agent(pipeline.deltas_topic)
    async def apply_deltas(stream):
        async for event in stream.events():
            await pipeline.apply(event.message.partition, event.message.value)

    @app.agent(pipeline.items_topic)
    async def store_items(stream):
        async for events in stream.take_events(1000, within=0.2):
            await pipeline.store_items([(e.message.partition, e.message.key, e.message.value) for e in events])

    @app.agent(pipeline.candidates_topic)
    async def merge_partitions(stream):
        async for event in stream.events():
            await pipeline.merge(event.value)

    @app.task
    async def score_partitions():
        await pipeline.run_scoring()

    @app.timer(1.0)
    async def flush_idle_partitions():
        await pipeline.flush_idle()

    @app.timer(1.0)
    async def write_status():
        pipeline.write_status()

    @app.timer(10.0)
    async def log_progress():
        pipeline.log_progress()

    app.on_partitions_revoked.connect(pipeline.on_revoked)
    return app


class Pipeline:
    """The worker's state and the agents' bodies; holds no logic a pure module could hold."""

    def __init__(self, app: faust.App, config: WorkerConfig, runtime: ScorerRuntime) -> None:
        self.app = app
        self.config = config
        self.runtime = runtime
        topics = config.topics
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.clicks_topic = app.topic(topics.clicks, partitions=config.partitions, **raw)
        self.deltas_topic = app.topic(config.deltas_topic, partitions=config.partitions, internal=True, **raw)
        self.items_topic = app.topic(topics.items, partitions=config.partitions, **raw)
        self.candidates_topic = app.topic(config.candidates_topic, partitions=1, internal=True, **raw)
        raw_schema = faust.Schema(key_type=bytes, value_type=bytes, **raw)
        self.counts_table = app.Table(config.table_name, partitions=config.partitions, schema=raw_schema)
        self.items_table = app.Table("items", partitions=config.partitions, schema=raw_schema)
        self.merge_table = app.Table("merge", partitions=1, schema=raw_schema)
        self.router = DeltaRouter(config.partitions, config.spec, config.dedup_capacity)
        self.states: dict[int, PartitionState] = {}
        self.locks: dict[int, asyncio.Lock] = {}
        self.last_input_at: dict[int, float] = {}
        self.empty_reported: dict[int, int] = {}
        self.counters = Counters()

    # --- stage 1 ---------------------------------------------------------------------------------------

    async def ingest(self, messages: list[tuple[int, int, bytes | None]]) -> None:
        if not self.counters.first_input_at:
            self.counters.first_input_at = time.time()
        batch = self.router.route(messages, latest_acceptable_ts_ms(self.config.max_future_s))
        producer = self.app.producer
        sends = []
        for source, offset, rejection in batch.rejections:
            record = dlq_record(rejection, self.config.topics.clicks, source, offset)
            sends.append(await producer.send(self.config.topics.dlq, None, record, None, None, None))
        for source, watermark in batch.watermarks.items():
            for target in range(self.config.partitions):
                value = encode_deltas(source, watermark, batch.deltas.get((source, target)))
                sends.append(await producer.send(self.config.deltas_topic, None, value, target, None, None))
        await asyncio.gather(*sends)
        self.counters.events += batch.events
        self.counters.dlq += len(batch.rejections)
        self.counters.duplicates += batch.duplicates

    # --- stage 2 ---------------------------------------------------------------------------------------

    def state_for(self, partition: int) -> PartitionState:
        state = self.states.get(partition)
        if state is None:
            db = self.counts_table.data._db_for_partition(partition)
            state = self.states[partition] = PartitionState(
                partition, db, self.config.spec, self.config.partitions, self.config.max_candidates)
            self.locks[partition] = asyncio.Lock()
        return state

    async def apply(self, partition: int, value: bytes) -> None:
        source, watermark, columns = decode_deltas(value)
        state = self.state_for(partition)
        async with self.locks[partition]:
            update = state.apply_deltas(source, watermark, columns)
            await self.commit(self.counts_table, partition, update.writes)
            self._count(update)
            self.last_input_at[partition] = time.monotonic()
            due = self.snapshot_due(state, idle=False)
        for job in due:  # outside the lock: run_scoring takes it to commit, and a full queue waits for that
            await self.score_queue.put(job)

    def _count(self, update: StateUpdate) -> None:
        self.counters.counted += update.applied_events
        if update.applied_events:
            self.counters.last_counted_at = time.time()
        self.counters.late += update.late_events
        self.counters.redelivered_skipped += update.skipped_entries

    async def commit(self, table, partition: int, writes: dict[bytes, bytes]) -> None:
        """Changelog first (acked), then one local WriteBatch and the persisted changelog offset."""
        if not writes:
            return
        changelog = table.changelog_topic.get_topic_name()
        last_offset = await self.send_record_batches(changelog, partition, writes)
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in writes.items():
            batch.put(key, value)
        store = table.data
        store._db_for_partition(partition).write(batch)
        store.set_persisted_offset(TP(changelog, partition), last_offset)

    async def send_record_batches(self, topic: str, partition: int, records: dict[bytes, bytes]) -> int:
        """Send key/value records to one partition as whole record batches; the offset of the last one.

        aiokafka's per-record send costs ~25 us (a future and a lookup per record) and was the largest
        cost of a table write; a BatchBuilder holds up to producer_max_batch_size bytes of records.
        """
        producer = self.app.producer._ensure_producer()  # the aiokafka producer under faust's
        sent: list[tuple[asyncio.Future, int]] = []
        batch, in_batch = producer.create_batch(), 0
        for key, value in records.items():
            if batch.append(key=key, value=value, timestamp=None) is None:
                sent.append((await producer.send_batch(batch, topic, partition=partition), in_batch))
                batch, in_batch = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a {len(value)}-byte changelog record exceeds producer_max_batch_size")
            in_batch += 1
        sent.append((await producer.send_batch(batch, topic, partition=partition), in_batch))
        results = await asyncio.gather(*(future for future, _ in sent))
        return results[-1].offset + sent[-1][1] - 1

    def snapshot_due(self, state: PartitionState, idle: bool) -> list[tuple]:
        """Scoring jobs for every due boundary, snapshotted now (features read only slots before it).

        The model runs in `run_scoring`, not here, so the deltas agent keeps applying while a step is
        scored; a full queue (scoring slower than the data) holds the agent back.
        """
        if state.next_boundary is None:
            reach = state.reach_slot(idle)
            if reach is None or reach <= self.empty_reported.get(state.partition, -(2**62)):
                return []
            self.empty_reported[state.partition] = reach
            return [(state, reach, None)]  # no data yet: report progress so the merge step never waits
        jobs = []
        for boundary in state.due_boundaries(idle):
            batch = features_at(state.snapshot(), boundary, self.config.spec, self._texts_of(state.partition))
            state.advance(boundary)
            jobs.append((state, boundary, batch))
        return jobs

    @functools.cached_property
    def score_queue(self) -> asyncio.Queue:
        return asyncio.Queue(maxsize=64)

    async def run_scoring(self) -> None:
        """Forecast queued snapshots in order and send each partition's candidates to the merge step."""
        while True:
            state, boundary, batch = await self.score_queue.get()
            if self.states.get(state.partition) is not state:
                continue  # partition revoked meanwhile: its new owner scores from the committed boundary
            candidates: list[dict] = []
            if batch is not None:
                forecast, scorer = await self.runtime.forecast(batch)
                candidates = partition_candidates(batch, forecast, self.config.top_k, scorer.name)
            message = orjson.dumps({"b": boundary, "p": state.partition, "candidates": candidates})
            await (await self.app.producer.send(self.config.candidates_topic, None, message, 0, None, None))
            if batch is not None:
                async with self.locks[state.partition]:
                    await self.commit(self.counts_table, state.partition, state.commit_scored(boundary))

    async def store_items(self, records: list[tuple[int, bytes | None, bytes | None]]) -> None:
        """Catalogue records (item id -> JSON with title/text) into the items table, by partition."""
        by_partition: dict[int, dict[bytes, bytes]] = {}
        for partition, key, value in records:
            if key and value:
                by_partition.setdefault(partition, {})[key] = value
        for partition, writes in by_partition.items():
            await self.commit(self.items_table, partition, writes)
            self.counters.catalogue_items += len(writes)

    def _texts_of(self, partition: int):
        db = self.items_table.data._db_for_partition(partition)

        def texts_of(item_ids: list[str]) -> list[str]:
            return [catalogue_text(value) for value in db.get([item.encode() for item in item_ids])]
        return texts_of

    async def flush_idle(self) -> None:
        """Wall-clock fallback for quiet streams: score what the data reached once input stops."""
        if self.config.idle_flush_s <= 0 or not self.score_queue.empty():
            return  # queued steps mean backpressure (input may be waiting in Kafka), not a quiet stream
        for partition, state in list(self.states.items()):
            async with self.locks[partition]:
                quiet_s = time.monotonic() - self.last_input_at.get(partition, time.monotonic())
                due = self.snapshot_due(state, idle=True) if quiet_s >= self.config.idle_flush_s else []
            for job in due:
                await self.score_queue.put(job)

    async def on_revoked(self, app, revoked, **kwargs) -> None:
        # state caches are rebuilt from the store when a partition comes back
        for tp in revoked:
            if tp.topic == self.config.deltas_topic:
                self.states.pop(tp.partition, None)

    # --- merge step ------------------------------------------------------------------------------------

    async def merge(self, value: bytes) -> None:
        message = orjson.loads(value)
        boundary, partition = message["b"], message["p"]
        progress = self._merge_progress()
        if boundary <= progress["emitted_upto"] or progress["reported"].get(str(partition), -1) >= boundary:
            return  # re-delivered after a crash
        key = f"pending:{boundary:020d}".encode()
        pending = orjson.loads(self.merge_db.get(key) or b"{}")
        pending[str(partition)] = message["candidates"]
        progress["reported"][str(partition)] = boundary
        writes = {key: orjson.dumps(pending)}
        writes.update(await self._emit_complete(progress, writes))
        writes[b"progress"] = orjson.dumps(progress)
        await self.commit(self.merge_table, 0, writes)

    @property
    def merge_db(self):
        return self.merge_table.data._db_for_partition(0)

    def _merge_progress(self) -> dict:
        raw = self.merge_db.get(b"progress")
        return orjson.loads(raw) if raw else {"emitted_upto": -(2**62), "reported": {}}

    async def _emit_complete(self, progress: dict, unsaved: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """Emit, in order, every pending boundary that every partition has reported past.

        Returns the merge-table writes: emitted boundaries become empty values (a tombstone would do,
        but tansu never compacts, and an empty value keeps the changelog replay simple).
        """
        reported = progress["reported"]
        if len(reported) < self.config.partitions:
            return {}
        complete_upto = min(reported.values())
        pending = {k: v for k, v in self.merge_db.items(from_key=b"pending:") if k.startswith(b"pending:") and v}
        pending.update(unsaved)
        writes: dict[bytes, bytes] = {}
        for key in sorted(pending):
            boundary = int(key[len(b"pending:"):])
            if boundary > complete_upto:
                break
            candidates = [c for part in orjson.loads(pending[key]).values() for c in part]
            records = await self._explained_records(candidates, boundary)
            for record in records:
                await self.app.producer.send(
                    self.config.topics.trending, str(boundary).encode(), orjson.dumps(record), None, None, None)
            self.counters.steps_scored += 1
            self.counters.trends_emitted += len(records)
            writes[key] = b""
            progress["emitted_upto"] = boundary
        return writes

    async def _explained_records(self, candidates: list[dict], boundary: int) -> list[dict]:
        """Global top-K of a step, explained by the scorer whose forecasts ranked them."""
        if not candidates:
            return []
        batch, forecast, chosen = merge_top_k(candidates, boundary, self.config.spec, self.config.top_k)
        scorer = self.runtime.scorer_by_name(candidates[chosen[0]].get("model", ""))
        explanations, writer = await self.runtime.explain(scorer, batch, forecast, chosen)
        from_model = writer is not self.runtime.baseline
        texts, sources = grounded_explanations(batch, forecast, chosen, explanations, from_model,
                                               template=self.runtime.baseline)
        replaced = sources.count("template") if from_model else 0
        self.counters.explanations_generated += len(texts) if from_model else 0
        self.counters.explanations_replaced += replaced
        if replaced:
            log.info("step %d: %d of %d generated explanations failed the faithfulness check; templates published",
                     boundary, replaced, len(texts))
        model = {"name": scorer.name, "version": scorer.version, "sha256": scorer.sha256}
        return trend_records(batch, forecast, chosen, texts, model, sources)

    def log_progress(self) -> None:
        log.info("trail: %s", orjson.dumps(self.counters.as_dict()).decode())

    def write_status(self) -> None:
        """The status file operators and benches read: counters, scorer, owned partitions (atomic replace)."""
        path = self.config.status_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        assigned = sorted(tp.partition for tp in self.app.consumer.assignment()
                          if tp.topic == self.config.topics.clicks)
        tmp.write_bytes(orjson.dumps({**self.counters.as_dict(), "scorer": self.runtime.scorer.name,
                                      "scorer_fallbacks": self.runtime.fallbacks,
                                      "assigned": assigned, "written_at": time.time()}))
        tmp.replace(path)
