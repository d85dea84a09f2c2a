"""The merge step of the worker: each partition's candidates in, global top-K trend records out.

`MergeStep` is a part of `streams.app.Pipeline` (which holds the app, config, runtime, tables and counters);
split out so each module reads as one stage. What a candidates message is and when a step is complete are
pure (`streams.merge`); ranking and explanations are `streams.scoring_loop`'s. Every record is acked by the
broker before the step is marked emitted.
"""

from __future__ import annotations

import asyncio
import logging

import orjson

from infra.internal_auth import Headers
from streams import metrics
from streams.deltas import InvalidInternalMessage
from streams.merge import CandidatesMessage, MergeProgress, pending_key, record_id
from streams.scoring_loop import grounded_explanations, merge_top_k, trend_records
from streams.table_store import partition_db

log = logging.getLogger("trail.worker")


class MergeStep:
    """Merge-step bodies of `Pipeline`: `merge` (the candidates agent) and the emission of complete steps."""

    async def merge(self, offset: int, value: bytes | None, key: bytes | None, headers: Headers) -> None:
        if not await self.authentic(self.config.candidates_topic, 0, offset, key, value, headers):
            return
        try:
            message = CandidatesMessage.decode(value, self.config.partitions, self.config.top_k,
                                               self.config.spec.n_buckets)
        except InvalidInternalMessage as exc:
            await self.reject_internal(self.config.candidates_topic, 0, offset, value, str(exc))
            return
        self.step_trace.mark(message.boundary, "candidates_read")
        progress = MergeProgress.decode(self.merge_db.get(b"progress"))
        if not progress.is_new(message):
            return  # re-delivered after a crash
        key = pending_key(message.boundary)
        pending = orjson.loads(self.merge_db.get(key) or b"{}")
        pending[str(message.partition)] = message.candidates
        progress.reported[str(message.partition)] = message.boundary
        writes: dict[bytes, bytes | None] = {key: orjson.dumps(pending)}
        writes.update(await self._emit_complete(progress, writes))
        writes[b"progress"] = progress.encode()
        await self.writer.commit(self.merge_table, 0, writes)

    @property
    def merge_db(self):
        return partition_db(self.merge_table, 0)

    async def _emit_complete(self, progress: MergeProgress, unsaved: dict[bytes, bytes | None]) -> dict:
        """Emit, in order, every pending boundary that every partition has reported past.

        Every record is acked by the broker before the step is marked emitted (the caller commits the
        progress after this returns): a crash in between emits the step again, with the same record ids.
        Returns the merge-table writes: emitted boundaries are deleted.
        """
        complete_upto = progress.complete_upto(self.config.partitions)
        if complete_upto is None:
            return {}
        pending = {k: v for k, v in self.merge_db.items(from_key=b"pending:") if k.startswith(b"pending:") and v}
        pending.update({k: v for k, v in unsaved.items() if v})
        writes: dict[bytes, bytes | None] = {}
        for key in sorted(pending):
            boundary = int(key[len(b"pending:"):])
            if boundary > complete_upto:
                break
            self.step_trace.mark(boundary, "merged")
            candidates = [c for part in orjson.loads(pending[key]).values() for c in part]
            with metrics.STEP_SECONDS.time():
                with metrics.EXPLAIN_SECONDS.time():
                    records = await self._explained_records(candidates, boundary)
                sends = [await self.app.producer.send(self.config.topics.trending, str(boundary).encode(),
                                                      orjson.dumps(record), None, None, None) for record in records]
                await asyncio.gather(*sends)
            self.step_trace.mark(boundary, "emitted")
            self.last_step = records or self.last_step
            self.counters.steps_scored += 1
            self.counters.trends_emitted += len(records)
            writes[key] = None
            progress.emitted_upto = boundary
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
        records = trend_records(batch, forecast, chosen, texts, model, sources)
        for record in records:
            record["record_id"] = record_id(record["window"], record["rank"], model)
        return records
