"""Is this worker alive, and is it ready: the answers behind `/healthz` and `/readyz`.

Ready means what an orchestrator's readiness probe needs before it counts the worker in: the worker owns
input partitions, faust's table recovery is over (first start and every rebalance after it), and the
scorer it was asked for is the one loaded (not the baseline it fell back to). Reads the pipeline and
faust's recovery object only; no HTTP and no Kafka I/O here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from faust.exceptions import ConsumerNotStarted


@dataclass(frozen=True)
class Readiness:
    assigned: list[int]          # clicks partitions this worker owns
    recovering: bool             # table recovery running (or not yet finished since the last rebalance)
    scorer: str                  # the scorer serving now
    scorer_as_requested: bool    # False while a requested bundle is unusable and the baseline serves
    runs_merge: bool             # owns the 1-partition candidates topic: emits the global top-K

    @property
    def ready(self) -> bool:
        return bool(self.assigned) and not self.recovering and self.scorer_as_requested

    def as_dict(self) -> dict:
        return {"ready": self.ready, **asdict(self)}


def assigned_partitions(pipeline, topic: str) -> list[int]:
    """Partitions of `topic` in the consumer's current assignment (empty before the first rebalance)."""
    try:
        assignment = pipeline.app.consumer.assignment()
    except ConsumerNotStarted:   # the HTTP endpoints answer before faust has started its consumer
        return []
    return sorted(tp.partition for tp in assignment if tp.topic == topic)


def is_recovering(pipeline) -> bool:
    """True until faust finished its first table recovery, and while a later rebalance or recovery runs.

    `Pipeline.recovery_state` is refreshed by a timer, and faust starts timers only after the first
    recovery, so the first one is read from faust's recovery object directly.
    """
    app = pipeline.app
    first_recovery_done = app.tables.recovery.completed.is_set()
    return (not first_recovery_done or bool(getattr(app, "rebalancing", False))
            or bool(getattr(app.tables.recovery, "in_recovery", False)) or pipeline.recovery_state["recovering"])


def readiness(pipeline) -> Readiness:
    runtime = pipeline.runtime
    return Readiness(
        assigned=assigned_partitions(pipeline, pipeline.config.topics.clicks),
        recovering=is_recovering(pipeline),
        scorer=runtime.scorer.name,
        scorer_as_requested=not runtime.uses_model or runtime.scorer is not runtime.baseline,
        runs_merge=0 in assigned_partitions(pipeline, pipeline.config.candidates_topic),
    )
