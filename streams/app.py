"""The Faust app: topics, tables and four thin agents that delegate to the pure modules.

One click's path: `count_clicks` (stage 1: decode, validate, de-duplicate, pre-aggregate,
`streams.deltas`) -> internal deltas topic, routed to the item's partition -> `apply_deltas` (stage 2:
`streams.state` adds a batch's deltas to the rings, one write per table partition to RocksDB and its
changelog) -> when the watermark crosses a slot boundary, the partition's top-K candidates
(`streams.scoring_loop`) -> `merge_partitions` (one partition) -> global top-K trend v1 records on
`trending-items`.

Table writes bypass faust's per-key `table[key] = value` path (one changelog send through a 100-entry
buffer per key, ~100x slower): `streams.table_store` sends each write as one changelog group, waits for
the acks, then applies it locally in one WriteBatch with the persisted offset; recovery applies whole
groups only. In-memory state moves only after a commit succeeded.

`Pipeline` holds the worker's state and the agents' bodies; its stage 1 (`streams.stage_one`), stage 2
(`streams.stage_two`), merge step (`streams.merge_step`) and status reporting (`streams.status_report`) are
parts of it in modules of their own.

Internal messages (deltas, candidates) carry an HMAC-SHA256 tag in a header (`infra.internal_auth`): the
agents that read them check it before anything is parsed; an untagged or mis-tagged message goes to the DLQ
(`bad_signature`), never applied.

Fail-stop: an exception that escapes an agent, task or timer stops the worker with exit code 70 before
faust can acknowledge the batch it came from (faust's default would log it, acknowledge the batch and
restart the agent: input lost, worker looking healthy). A supervisor restarts the worker, which resumes
from the committed offsets and the changelog.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import faust

from infra.internal_auth import Headers, InternalKeys
from streams import metrics
from streams.batch_drain import BulkTopic, install_batch_drain, track_live_messages
from streams.catalogue import catalogue_text, validate_catalogue_record
from streams.config import WorkerConfig
from streams.deltas import DeltaRouter
from streams.events import Rejection, dlq_record
from streams.merge import CandidatesMessage
from streams.merge_step import MergeStep
from streams.recovery_watch import RecoveryWatch
from streams.scorer_runtime import ScorerRuntime
from streams.scoring_loop import (
    partition_candidates,
)
from streams.stage_one import StageOne
from streams.stage_two import ScoringJob, StageTwo
from streams.state import PartitionState
from streams.status_report import StatusReporting
from streams.step_trace import StepTrace
from streams.table_store import TableWriter, partition_db, register_store

log = logging.getLogger("trail.worker")


@dataclass
class Counters:
    events: int = 0
    counted: int = 0             # events added to the table (stage 2)
    catalogue_items: int = 0     # item records stored from the items topic
    dlq: int = 0
    dlq_by_reason: dict[str, int] = field(default_factory=dict)  # of dlq, by the records' reason_code
    dlq_internal: int = 0            # internal-topic messages rejected (forged or corrupt), never applied
    dlq_bad_signature: int = 0       # of those, without a valid HMAC tag (infra.internal_auth)
    duplicates: int = 0
    late: int = 0
    redelivered_skipped: int = 0
    steps_scored: int = 0
    assignments: int = 0             # partition assignments received (rebalances this worker took part in)
    trends_emitted: int = 0
    explanations_generated: int = 0  # explanations written by the TRAIL scorer (checked before publishing)
    explanations_replaced: int = 0   # of those, failed the faithfulness check: the template was published
    started_at: float = field(default_factory=time.time)
    first_input_at: float = 0.0      # wall time of the first clicks batch (benchmarks time from here)
    last_counted_at: float = 0.0     # wall time of the last table write

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def create_app(config: WorkerConfig, runtime: ScorerRuntime, internal_keys: InternalKeys) -> faust.App:
    app = faust.App(
        config.app_id,
        broker=config.kafka.faust_broker_url(),
        broker_credentials=config.kafka.faust_credentials(),
        store=register_store(),
        datadir=str(config.data_dir / config.worker_id),
        topic_partitions=config.partitions,
        topic_allow_declare=False,        # topics are created explicitly (infra.admin)
        web_enabled=False,
        broker_session_timeout=10,        # tansu holds JoinGroup for session_timeout / 2
        broker_max_poll_records=20_000,
        consumer_auto_offset_reset="earliest",
        producer_linger_ms=1,             # every hop of a step awaits acks: 5 ms each added ~0.05 s to a step
        producer_max_batch_size=512 * 1024,   # changelog writes go out as whole record batches
        producer_max_request_size=4 * 1024 * 1024,  # a deltas message of one 1 MiB input message fits
        table_cleanup_interval=3600,
    )
    app.conf.broker_commit_every = 10_000
    pipeline = Pipeline(app, config, runtime, internal_keys)
    if pipeline.click_batches is not None:
        install_batch_drain(app, pipeline.click_batches)
    app.trail_pipeline = pipeline  # reachable from tests and the status file

    stop = pipeline.fail_stop

    @app.agent(pipeline.clicks_topic)
    async def count_clicks(stream):
        if pipeline.click_batches is None:   # --no-batch-drain: faust's stream, event by event
            async for events in stream.take_events(config.batch_max_messages, within=config.batch_within_s):
                await stop(pipeline.ingest, [(e.message.partition, e.message.offset, e.message.value)
                                             for e in events])
            return
        # the batch drain hands this topic over as lists of messages (streams.batch_drain.BulkTopic)
        consumer = app.consumer
        while True:
            messages = track_live_messages(app, await pipeline.click_batches.take(config.batch_within_s))
            if messages:
                await stop(pipeline.ingest, [(m.partition, m.offset, m.value) for m in messages])
                for message in messages:
                    consumer.ack(message)

    @app.agent(pipeline.deltas_topic)
    async def apply_deltas(stream):
        # batched so the table partitions apply side by side (their changelog writes share produce requests);
        # faust acks a batch only after its body returned
        async for events in stream.take_events(config.deltas_batch_max, within=config.deltas_batch_within_s):
            await stop(pipeline.apply_batch, [(e.message.partition, e.message.offset, e.message.value,
                                               e.message.key, e.message.headers) for e in events])

    @app.agent(pipeline.items_topic)
    async def store_items(stream):
        async for events in stream.take_events(1000, within=0.2):
            await stop(pipeline.store_items,
                       [(e.message.partition, e.message.offset, e.message.key, e.message.value) for e in events])

    @app.agent(pipeline.candidates_topic)
    async def merge_partitions(stream):
        async for event in stream.events():
            await stop(pipeline.merge, event.message.offset, event.message.value, event.message.key,
                       event.message.headers)

    @app.task
    async def score_partitions():
        await stop(pipeline.run_scoring)

    @app.timer(1.0)
    async def declare_idle_sources():
        await stop(pipeline.declare_idle_sources)

    @app.timer(1.0)
    async def flush_idle_partitions():
        await stop(pipeline.flush_idle)

    @app.timer(10.0)
    async def log_progress():
        pipeline.log_progress()

    app.on_partitions_revoked.connect(pipeline.on_revoked)
    app.on_partitions_assigned.connect(pipeline.on_assigned)
    return app


class Pipeline(StageOne, StageTwo, MergeStep, StatusReporting):
    """The worker's state and the agents' bodies; holds no logic a pure module could hold."""

    def __init__(self, app: faust.App, config: WorkerConfig, runtime: ScorerRuntime,
                 internal_keys: InternalKeys) -> None:
        self.app = app
        self.config = config
        self.runtime = runtime
        self.internal_keys = internal_keys   # HMAC tags of the deltas and candidates messages
        topics = config.topics
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.clicks_topic = app.topic(topics.clicks, partitions=config.partitions, **raw)
        self.deltas_topic = app.topic(config.deltas_topic, partitions=config.partitions, internal=True, **raw)
        self.items_topic = app.topic(topics.items, partitions=config.partitions, **raw)
        self.candidates_topic = app.topic(config.candidates_topic, partitions=1, internal=True, **raw)
        # key_type/value_type bytes, not only the schema: faust derives the changelog topic's serializers from
        # them, and with its json default table recovery failed to decode every record and waited forever
        raw_table = {"key_type": bytes, "value_type": bytes,
                     "schema": faust.Schema(key_type=bytes, value_type=bytes, **raw)}
        self.counts_table = app.Table(config.table_name, partitions=config.partitions, **raw_table)
        self.items_table = app.Table("items", partitions=config.partitions, **raw_table)
        self.merge_table = app.Table("merge", partitions=1, **raw_table)
        self.writer = TableWriter(app)
        self.router = DeltaRouter(config.partitions, config.spec, config.dedup_capacity)
        self.states: dict[int, PartitionState] = {}
        self.locks: dict[int, asyncio.Lock] = {}   # one per partition for the process's life: never two owners
        self.last_input_at: dict[int, float] = {}
        # partitions whose just-applied deltas' due boundaries the deltas agent is about to queue (with their trace
        # marks): the idle flush leaves those to it
        self.due_pending: set[int] = set()
        self.source_heard_at: dict[int, float] = {}   # stage 1: last message per input partition (wall clock)
        self.source_read_upto: dict[int, int] = {}    # stage 1: offset after the last message whose deltas are sent
        self.idle_declared: dict[int, float] = {}     # input partitions this worker declared idle, and when
        self.idle_lock = asyncio.Lock()   # a revocation waits for an idle declaration in flight
        self.started_at = time.monotonic()
        self.empty_reported: dict[int, int] = {}
        self.counters = Counters()
        self.recovery_watch = RecoveryWatch(config.recovery_stall_s, config.recovery_give_up_s)
        self.recovery_state: dict = {"recovering": False}
        self.last_step: list[dict] = []   # the latest emitted step's records, for the live page
        self.step_trace = StepTrace()     # when each boundary passed each hop (status file, `trail bench latency`)
        self.stage1_slots: dict[int, int] = {}   # stage 1: per source, the last boundary its sent watermark crossed
        # with the batch drain, clicks arrive here, not on the agent's stream
        self.click_batches = BulkTopic(topics.clicks, config.batch_max_messages) if config.batch_drain else None

    async def fail_stop(self, body: Callable[..., Awaitable[None]], *args) -> None:
        """Run an agent's body; if it raises, log, write the status and exit at once (nothing acked)."""
        try:
            await body(*args)
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.critical("trail: %s failed; stopping the worker so its input is not acknowledged "
                         "(restart it: it resumes from the committed offsets)", body.__name__, exc_info=True)
            try:
                self.write_status(failed=body.__name__)
            finally:
                logging.shutdown()
                os._exit(70)

    async def send_internal(self, topic: str, value: bytes, partition: int) -> None:
        """Send one internal message with its HMAC tag and wait for the broker's ack."""
        headers = self.internal_keys.headers(topic, partition, None, value)
        await (await self.app.producer.send(topic, None, value, partition, None, headers))

    async def authentic(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                        headers: Headers) -> bool:
        """True if an internal message carries a valid tag for this topic and partition; else it goes to the
        DLQ (`bad_signature`) before anything in it is parsed."""
        reason = self.internal_keys.check(topic, partition, key, value, headers)
        if reason is None:
            return True
        await self.reject_internal(topic, partition, offset, value, reason, code="bad_signature")
        self.counters.dlq_bad_signature += 1
        return False

    async def reject_internal(self, topic: str, partition: int, offset: int, value: bytes | None,
                              reason: str, code: str = "bad_internal") -> None:
        """An internal or catalogue message this code did not write goes to the DLQ, never applied."""
        log.warning("trail: rejected %s[%d]@%d: %s", topic, partition, offset, reason)
        record = dlq_record(Rejection(value or b"", reason, None, code), topic, partition, offset)
        await self.writer.send(self.config.topics.dlq, None, record)
        self.counters.dlq_internal += 1

    @functools.cached_property
    def score_queue(self) -> asyncio.Queue:
        return asyncio.Queue(maxsize=64)

    async def run_scoring(self) -> None:
        """Forecast queued snapshots in order and send each partition's candidates to the merge step."""
        while True:
            job = await self.score_queue.get()
            if self.states.get(job.state.partition) is not job.state:
                continue  # partition revoked meanwhile: its new owner scores from the committed boundary
            candidates: list[dict] = []
            if job.batch is not None:
                with metrics.FORECAST_SECONDS.time():
                    forecast, scorer = await self.runtime.forecast(job.batch)
                if job.top_k_texts is not None and self.states.get(job.state.partition) is not job.state:
                    continue  # revoked while forecasting: its catalogue is not this worker's to read any more
                candidates = partition_candidates(job.batch, forecast, self.config.top_k, scorer.name,
                                                  job.top_k_texts)
            message = CandidatesMessage(job.boundary, job.state.partition, candidates)
            await self.send_internal(self.config.candidates_topic, message.encode(), 0)
            self.step_trace.mark(job.boundary, "scored")
            if job.commit:
                await self._commit_scored(job)

    async def _commit_scored(self, job: ScoringJob) -> None:
        partition = job.state.partition
        async with self.locks[partition]:
            if self.states.get(partition) is not job.state:
                return  # lost the partition after sending: the new owner may score it again (same content)
            await self.writer.commit(self.counts_table, partition, job.state.commit_scored(job.boundary))
            job.state.accept_scored(job.boundary)

    async def store_items(self, records: list[tuple[int, int, bytes | None, bytes | None]]) -> None:
        """Catalogue records (item id -> JSON with title/text) into the items table, by partition; records
        that are not catalogue records v1 go to the DLQ; a tombstone deletes the item. Stored texts are
        queued to be read by the model in the background, so the first step that sees them need not."""
        by_partition: dict[int, dict[bytes, bytes | None]] = {}
        for partition, offset, key, value in records:
            reason = validate_catalogue_record(key, value)
            if reason:
                await self.reject_internal(self.config.topics.items, partition, offset, value, reason)
                continue
            by_partition.setdefault(partition, {})[key] = value
        for partition, writes in by_partition.items():
            await self.writer.commit(self.items_table, partition, writes)
            self.counters.catalogue_items += len(writes)
            self.runtime.offer_texts([catalogue_text(value) for value in writes.values() if value is not None])

    def _texts_of(self, partition: int):
        db = partition_db(self.items_table, partition)

        def texts_of(item_ids: list[str]) -> list[str]:
            return [catalogue_text(value) for value in db.get([item.encode() for item in item_ids])]
        return texts_of

    async def flush_idle(self) -> None:
        """Catch up on boundaries still due (bounded per call), and the wall-clock fallback for quiet
        streams: score what the data reached once input stops."""
        if not self.score_queue.empty():
            return  # queued steps mean backpressure (input may be waiting in Kafka), not a quiet stream
        for partition, state in list(self.states.items()):
            async with self.locks[partition]:
                if self.states.get(partition) is not state or partition in self.due_pending:
                    continue
                quiet_s = time.monotonic() - self.last_input_at.get(partition, time.monotonic())
                idle = 0 < self.config.idle_flush_s <= quiet_s
                due = await self.due_jobs(state, idle=idle)
            for job in due:
                await self.score_queue.put(job)

    async def on_assigned(self, app, assigned, **kwargs) -> None:
        self.counters.assignments += 1   # status.json: the worker has joined its group (maybe with nothing)

    async def on_revoked(self, app, revoked, **kwargs) -> None:
        """Forget revoked partitions once no write or idle declaration of this worker is in flight for them
        (faust awaits this before the group rebalances, so a new owner never interleaves with the old)."""
        for tp in revoked:
            if tp.topic == self.config.deltas_topic:
                async with self.locks.setdefault(tp.partition, asyncio.Lock()):
                    self.states.pop(tp.partition, None)   # rebuilt from the store when the partition comes back
        if self.click_batches is not None:
            self.click_batches.forget(set(revoked))
        async with self.idle_lock:
            for tp in revoked:
                if tp.topic == self.config.topics.clicks:
                    # what this worker knew of the input partition is stale once another worker may read it
                    self.source_read_upto.pop(tp.partition, None)
                    self.idle_declared.pop(tp.partition, None)
                    self.source_heard_at[tp.partition] = time.monotonic()
