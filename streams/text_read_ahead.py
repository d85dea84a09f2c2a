"""Reading catalogue texts ahead of the steps: a bounded queue of item texts, read through the model's text
graph in the background, in the scorer's one thread (`streams.scorer_runtime`).

Why: the first step that sees an item otherwise reads its text at the step (32 texts/s for SmolLM2 on a
2-core CPU: minutes for a new catalogue, and the step falls back to the baseline). Catalogue records arrive
before the clicks that make their items candidates, so their texts are read as they arrive.

Bounds: at most `capacity` texts wait (more are dropped and counted; a step reads them when it needs them).
Each run of the scorer's thread looks up to `LOOK_UP` queued texts up in the text vector store (cheap) and
reads at most `batch` of those without a vector (costly), the rest going back to the front of the queue;
`batch` follows the last run's reading rate so that a run takes about `batch_s`, so a step submitted
meanwhile waits for at most one run. No Kafka I/O and no window logic here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

log = logging.getLogger("trail.scorer")
LOOK_UP = 1024       # queued texts looked up per run
MAX_BATCH = 1024     # texts read per run, at most


class TextReadAhead:
    """The queue and the background task; `scorer_of()` is the model scorer in service, None for the baseline."""

    def __init__(self, executor: Executor, scorer_of: Callable[[], object | None], capacity: int = 100_000,
                 batch_s: float = 0.25) -> None:
        self.executor = executor
        self.scorer_of = scorer_of
        self.capacity = capacity
        self.batch_s = batch_s
        self.batch = 8              # the first run is small: the model's reading rate is not known yet
        self.dropped = 0
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        return len(self._queue)

    def offer(self, texts: list[str]) -> None:
        """Queue item texts to be read in the background (empty and already queued ones skipped); on the loop."""
        if self.scorer_of() is None:
            return
        for text in texts:
            if not text or text in self._queued:
                continue
            if len(self._queued) >= self.capacity:
                self.dropped += 1
                continue
            self._queue.append(text)
            self._queued.add(text)
        if self._queue and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _take(self, n: int) -> list[str]:
        texts = [self._queue.popleft() for _ in range(min(n, len(self._queue)))]
        self._queued.difference_update(texts)
        return texts

    def _put_back(self, texts: list[str]) -> None:
        """Texts a run looked up but had no reads left for: first in line for the next run."""
        fresh = [t for t in texts if t not in self._queued]
        self._queue.extendleft(reversed(fresh))
        self._queued.update(fresh)

    async def _run(self) -> None:
        """Read queued texts, one bounded run at a time in the scorer's thread, until none is left."""
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                scorer = self.scorer_of()
                texts = self._take(LOOK_UP)
                if scorer is None:
                    continue   # the bundle became unusable: nothing reads ahead for the baseline
                started = time.monotonic()
                try:
                    read, rest = await loop.run_in_executor(self.executor, scorer.prepare_texts, texts, self.batch)
                except Exception as exc:  # noqa: BLE001 - a step reads these texts itself when it needs them
                    log.warning("reading %d catalogue texts ahead failed (%s: %s); a step reads them when it needs "
                                "them", len(texts), type(exc).__name__, exc)
                    continue
                self._put_back(rest)
                self._size_next_batch(read, time.monotonic() - started)
        finally:
            self._task = None

    def _size_next_batch(self, read: int, elapsed_s: float) -> None:
        """As many texts as the last run's rate reads in batch_s (8 to MAX_BATCH)."""
        if read >= 4 and elapsed_s > 0:
            self.batch = max(8, min(MAX_BATCH, int(read / elapsed_s * self.batch_s)))

    async def wait(self) -> None:
        """Until every queued text has been read (benches and tests)."""
        while self._task is not None:
            await asyncio.shield(self._task)
