"""Stage 2 of the worker: deltas in, exact counts in the table, scoring jobs out when the watermark passes.

`StageTwo` is a part of `streams.app.Pipeline` (which holds the app, config, tables, locks, counters and the
scoring queue); split out so each module reads as one stage. What a deltas message changes is pure
(`streams.state.PartitionState`); this module owns its Kafka side: authentication, the write to RocksDB and
its changelog, the DLQ records of bad input the partition owns, the end-offset checks behind idleness, and
the snapshots for the scoring jobs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from faust.types import TP

from infra.internal_auth import Headers
from models.features import FeatureBatch
from streams.deltas import DeltaColumns, InvalidInternalMessage, decode_deltas
from streams.events import latest_acceptable_ts_ms
from streams.scoring_loop import features_at
from streams.state import PartitionState, StateUpdate
from streams.table_store import partition_db

log = logging.getLogger("trail.worker")


@dataclass
class ScoringJob:
    """One partition's snapshot at one boundary, forecast off the deltas agent.

    `batch` None: a progress report only (nothing to score up to `boundary`, so the merge step need not
    wait for this partition). `commit`: record the boundary as scored once the candidates are sent.
    `top_k_texts`: the catalogue reader for the top-K's texts when the snapshot did not read every
    candidate's (a scorer without a model reads no texts; only the records' titles need them).
    """

    state: PartitionState
    boundary: int
    batch: FeatureBatch | None
    commit: bool = True
    top_k_texts: Callable[[list[str]], list[str]] | None = None


class StageTwo:
    """Stage 2 bodies of `Pipeline`: `apply_batch` (the deltas agent), `due_jobs` and the snapshots."""

    def state_for(self, partition: int) -> PartitionState:
        state = self.states.get(partition)
        if state is None:
            state = self.states[partition] = PartitionState(
                partition, partition_db(self.counts_table, partition), self.config.spec, self.config.partitions,
                self.config.max_candidates, input_incarnation=self.config.input_incarnation)
            self.locks.setdefault(partition, asyncio.Lock())
        return state

    async def apply_batch(self, messages: list[tuple[int, int, bytes | None, bytes | None, Headers]]) -> None:
        """Apply a batch of deltas messages (partition, offset, value, key, headers): one write per table
        partition, its messages in order, the partitions concurrently (their changelog writes share requests);
        then, once every partition's counts are written, the scoring jobs the watermark made due.

        Counting every partition before snapshotting any gets the counts into the table sooner (a batch
        crossing many boundaries snapshotted ~30 ms per partition before the next partition's counts) and
        delays no record: the merge step waits for every partition's candidates of a boundary anyway."""
        received_at = time.time()
        by_partition: dict[int, list] = {}
        for partition, *message in messages:
            by_partition.setdefault(partition, []).append(message)
        applied = await asyncio.gather(*(self.apply(partition, part) for partition, part in by_partition.items()))
        for partition, state, had_input in filter(None, applied):
            await self.queue_due_jobs(partition, state, had_input, received_at)

    async def apply(self, partition: int, messages: list[tuple[int, bytes | None, bytes | None, Headers]]
                    ) -> tuple[int, PartitionState, bool] | None:
        """Add one table partition's deltas messages (offset, value, key, headers) to its rings in one write:
        (partition, its state, whether they held input rather than only idle declarations), or None when
        there was nothing to apply or the partition was revoked meanwhile."""
        parts = await self._decode_deltas(partition, messages)
        if not parts:
            return None
        state = self.state_for(partition)
        async with self.locks[partition]:
            if self.states.get(partition) is not state:
                return None  # revoked while waiting: the new owner applies them (the offsets were not committed)
            update = state.apply_messages(parts)
            await self._publish_dlq(update)     # before the commit: a crash in between repeats, never loses
            await self.writer.commit(self.counts_table, partition, update.writes)
            state.accept(update)
            self._count(update)
            self.due_pending.add(partition)   # until queue_due_jobs ran: between the two, the lock is free
        return partition, state, any(idle_end is None for *_, idle_end in parts)

    async def queue_due_jobs(self, partition: int, state: PartitionState, had_input: bool, received_at: float
                             ) -> None:
        """Snapshot the boundaries the applied deltas made due and queue their scoring jobs."""
        async with self.locks[partition]:
            self.due_pending.discard(partition)
            if self.states.get(partition) is not state:
                return  # revoked since it applied: the new owner scores from the committed boundary
            due = await self.due_jobs(state, idle=False)
            if had_input or partition not in self.last_input_at:
                # an idle declaration is not input: the declarations repeat every --source-idle-timeout-s and
                # kept the idle flush (quiet for --idle-flush-s) from ever firing when that was shorter. Taken
                # after `due_jobs`, whose end-offset lookup can take seconds under load: time spent here is not
                # quiet (the idle flush then closed steps while this partition's next messages waited)
                self.last_input_at[partition] = time.monotonic()
        for job in due:  # outside the lock: run_scoring takes it to commit, and a full queue waits for that
            self.step_trace.mark(job.boundary, "applied", received_at)
            await self.score_queue.put(job)
            self.step_trace.mark(job.boundary, "queued")

    async def _decode_deltas(self, partition: int, messages: list[tuple[int, bytes | None, bytes | None, Headers]]
                             ) -> list[tuple[int, int, DeltaColumns, int | None]]:
        """(source, watermark, columns, idle end) of each authentic, well-formed message; the others go to the
        DLQ, never applied."""
        parts, max_ts_ms = [], latest_acceptable_ts_ms(self.config.max_future_s)
        for offset, value, key, headers in messages:
            if not await self.authentic(self.config.deltas_topic, partition, offset, key, value, headers):
                continue
            try:
                parts.append(decode_deltas(value, self.config.partitions, max_ts_ms))
            except InvalidInternalMessage as exc:
                await self.reject_internal(self.config.deltas_topic, partition, offset, value, str(exc))
        return parts

    async def _publish_dlq(self, update: StateUpdate) -> None:
        """Publish the DLQ records of bad input that this partition owns and has not published yet."""
        if not update.dlq_records:
            return
        producer = self.app.producer
        sends = [await producer.send(self.config.topics.dlq, None, orjson.dumps(record), None, None, None)
                 for record in update.dlq_records]
        await asyncio.gather(*sends)
        self.counters.dlq += len(update.dlq_records)
        for record in update.dlq_records:
            code = str(record.get("reason_code", ""))
            self.counters.dlq_by_reason[code] = self.counters.dlq_by_reason.get(code, 0) + 1

    def _count(self, update: StateUpdate) -> None:
        self.counters.counted += update.applied_events
        if update.applied_events:
            self.counters.last_counted_at = time.time()
        self.counters.late += update.late_events
        self.counters.redelivered_skipped += update.skipped_entries
        self.counters.duplicates += update.duplicate_events

    async def due_jobs(self, state: PartitionState, idle: bool) -> list[ScoringJob]:
        """`snapshot_due`, once every source declared idle that the watermark's advance relies on is checked
        against its end offset now (called with the partition's lock held)."""
        if (idle and state.every_source_idle()) or state.advance_relies_on_idle():
            await self.confirm_idle(state)
        # the idle flush closes what the data reached only once every input partition is read to its end:
        # a reader busy with a backlog (a restart, a large batch) is not a quiet stream
        return self.snapshot_due(state, idle and state.every_source_idle())

    async def confirm_idle(self, state: PartitionState) -> None:
        """Ask the broker for the idle sources' end offsets; any that moved (or cannot be read) is not idle."""
        clicks = self.config.topics.clicks
        try:
            ends = await self.app.consumer.highwaters(*(TP(clicks, source) for source in state.idle_sources))
        except Exception:  # noqa: BLE001 - broker busy or unreachable: hold the watermark, ask again later
            log.warning("trail: could not read the input's end offsets; idle sources hold the watermark",
                        exc_info=True)
            ends = {}
        state.confirm_idle({tp.partition: end for tp, end in ends.items()})

    def snapshot_due(self, state: PartitionState, idle: bool) -> list[ScoringJob]:
        """Scoring jobs for the due boundaries (at most a bounded number per call; the rest stay due),
        snapshotted now (features read only slots before the boundary).

        The model runs in `run_scoring`, not here, so the deltas agent keeps applying while a step is
        scored; a full queue (scoring slower than the data) holds the agent back.
        """
        reach = state.reach_slot(idle)
        if state.next_boundary is None or state.empty_until(reach if reach is not None else -(2**62)) is not None:
            return self._progress_only(state, reach)
        boundaries = state.due_boundaries(idle)
        if not boundaries:
            return []
        jobs = []
        snapshot = state.snapshot()   # one read of the rings serves every boundary
        texts_of = self._texts_of(state.partition)
        # every candidate's text only for a model, which reads them (a sixth of a velocity worker's steps)
        all_texts = self.runtime.uses_model
        for boundary in boundaries:
            batch = features_at(snapshot, boundary, self.config.spec, texts_of if all_texts else None)
            state.advance(boundary)
            jobs.append(ScoringJob(state, boundary, batch, top_k_texts=None if all_texts else texts_of))
        return jobs

    def _progress_only(self, state: PartitionState, reach: int | None) -> list[ScoringJob]:
        """No data yet, or only empty windows up to `reach`: report progress so the merge step never waits."""
        if reach is None or reach <= self.empty_reported.get(state.partition, -(2**62)):
            return []
        self.empty_reported[state.partition] = reach
        if state.next_boundary is None:
            return [ScoringJob(state, reach, None, commit=False)]
        state.advance(reach)
        return [ScoringJob(state, reach, None)]
