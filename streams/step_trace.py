"""When each step passed each hop of the worker, in wall-clock time: the latency profile of a boundary.

A boundary's path (`streams.stage_one` -> `streams.app` -> `streams.merge_step`): `stage1_read` (stage 1's batch
holding the events that crossed it began), `stage1_sent` (that batch's deltas were acked), `applied` (stage 2's
batch whose deltas let the partition's watermark cross it began), `queued` (its scoring job entered the
queue), `scored` (the partition's candidates were acked), `candidates_read` (the merge step read them),
`merged` (the merge step had every partition's candidates), `emitted` (its trend records were acked).
Each stage keeps the *latest* mark per boundary: the step waits for the last source and the last partition.
Marks are kept for the newest `capacity` boundaries only (bounded memory); the status file carries them so
`trail bench latency` can split the time from window end to record. No I/O here.
"""

from __future__ import annotations

import time
from collections import OrderedDict

STAGES = ("stage1_read", "stage1_sent", "applied", "queued", "scored", "candidates_read", "merged", "emitted")


class StepTrace:
    """Wall-clock seconds per (boundary, stage), latest mark wins, newest `capacity` boundaries kept."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.marks: OrderedDict[int, dict[str, float]] = OrderedDict()

    def mark(self, boundary: int, stage: str, at: float | None = None) -> None:
        stages = self.marks.get(boundary)
        if stages is None:
            if self.marks and boundary < next(iter(self.marks)) and len(self.marks) >= self.capacity:
                return   # older than everything kept: not worth evicting a newer step for
            stages = self.marks[boundary] = {}
            if len(self.marks) > self.capacity:
                oldest = min(self.marks)
                del self.marks[oldest]
        stages[stage] = time.time() if at is None else at

    def mark_crossed(self, previous_slot: int | None, new_slot: int, stage: str, at: float | None = None,
                     most: int = 4) -> None:
        """Mark every boundary in (previous_slot, new_slot], at most the newest `most` (a catch-up crosses many);
        previous_slot None (first sight): new_slot only."""
        first = new_slot if previous_slot is None else max(previous_slot + 1, new_slot - most + 1)
        at = time.time() if at is None else at
        for boundary in range(first, new_slot + 1):
            self.mark(boundary, stage, at)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """{boundary (str, for JSON): {stage: wall-clock seconds}}."""
        for _ in range(3):   # read from the status thread while the event loop marks: retry a torn read
            try:
                return {str(boundary): dict(stages) for boundary, stages in list(self.marks.items())}
            except RuntimeError:
                continue
        return {}
