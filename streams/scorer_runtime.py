"""The worker's scorer: a TRAIL ONNX bundle (or the velocity baseline), run off the event loop, with a
time budget per step, a fallback to the baseline, and hot swapping of a bundle whose files change.

Why here and not in the scorer: the stream must keep ingesting while a model runs (one worker thread
runs ONNX Runtime, which releases the GIL), must never stop because a bundle is missing, corrupt or slow,
and must say so in the log. No Kafka I/O and no window logic here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from export.bundle import MANIFEST, resolve_bundle_dir
from models.features import FeatureBatch
from models.scoring import Scorer, VelocityScorer

log = logging.getLogger("trail.scorer")
BASELINE_NAMES = ("velocity", "baseline")


def load_bundle(name_or_path: str, intra_op_threads: int) -> Scorer:
    """Load a TRAIL ONNX bundle (hashes verified by the loader); raises with the reason if unusable."""
    from export.onnx_scorer import load_bundle_scorer

    return load_bundle_scorer(name_or_path, providers="auto", intra_op_threads=intra_op_threads)


def bundle_fingerprint(name_or_path: str) -> float | None:
    """mtime of the bundle's manifest, or None if there is none (a change triggers a reload)."""
    try:
        return (resolve_bundle_dir(name_or_path) / MANIFEST).stat().st_mtime
    except OSError:
        return None


class ScorerRuntime:
    def __init__(self, scorer_name: str, step_budget_s: float = 5.0, reload_check_s: float = 5.0,
                 intra_op_threads: int = 1) -> None:
        # one ONNX thread by default: on a small box the other core keeps ingesting while a step runs
        self.scorer_name = scorer_name
        self.intra_op_threads = intra_op_threads
        self.step_budget_s = step_budget_s
        self.reload_check_s = reload_check_s
        self.baseline: Scorer = VelocityScorer()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trail-scorer")
        self.fallbacks = 0
        self.reloads = 0
        self._fingerprint: float | None = None
        self._checked_at = 0.0
        self.scorer: Scorer = self._load()

    @property
    def uses_model(self) -> bool:
        return self.scorer_name not in BASELINE_NAMES

    def _load(self) -> Scorer:
        if not self.uses_model:
            return self.baseline
        self._fingerprint = bundle_fingerprint(self.scorer_name)
        try:
            scorer = load_bundle(self.scorer_name, self.intra_op_threads)
        except Exception as exc:  # noqa: BLE001 - a bad bundle must never stop the stream
            log.error("TRAIL bundle %r is unusable (%s: %s); scoring with the %s baseline until it is fixed",
                      self.scorer_name, type(exc).__name__, exc, self.baseline.name)
            return self.baseline
        log.info("scoring with TRAIL bundle %s (version %s, sha256 %s)", scorer.name, scorer.version,
                 scorer.sha256[:12])
        return scorer

    def maybe_reload(self) -> None:
        """Swap in a bundle whose manifest changed (or appeared) since the last look; cheap to call often."""
        if not self.uses_model or time.monotonic() - self._checked_at < self.reload_check_s:
            return
        self._checked_at = time.monotonic()
        fingerprint = bundle_fingerprint(self.scorer_name)
        if fingerprint is not None and fingerprint != self._fingerprint:
            log.info("bundle %r changed on disk: reloading", self.scorer_name)
            self.scorer = self._load()
            self.reloads += 1

    async def forecast(self, batch: FeatureBatch) -> tuple[np.ndarray, Scorer]:
        """Forecasts and the scorer that made them (the baseline if the model failed or ran over budget)."""
        self.maybe_reload()
        scorer = self.scorer
        if scorer is self.baseline or not len(batch):
            return self.baseline.forecast(batch), self.baseline
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            forecast = await asyncio.wait_for(loop.run_in_executor(self.executor, scorer.forecast, batch),
                                              self.step_budget_s)
            return np.asarray(forecast, dtype=np.float64), scorer
        except Exception as exc:  # noqa: BLE001 - includes TimeoutError
            self.fallbacks += 1
            log.warning("TRAIL forecast of %d items failed after %.2fs (%s: %s); baseline used for this step",
                        len(batch), time.monotonic() - started, type(exc).__name__, exc)
            return self.baseline.forecast(batch), self.baseline

    async def explain(self, scorer: Scorer, batch: FeatureBatch, forecast: np.ndarray,
                      index: np.ndarray) -> tuple[list[str], Scorer]:
        """Explanations of rows `index` and the scorer that wrote them (the baseline on failure or overrun)."""
        if scorer is self.baseline:
            return self.baseline.explain(batch, forecast, index), self.baseline
        loop = asyncio.get_running_loop()
        try:
            texts = await asyncio.wait_for(
                loop.run_in_executor(self.executor, scorer.explain, batch, forecast, index), self.step_budget_s)
            return texts, scorer
        except Exception as exc:  # noqa: BLE001
            self.fallbacks += 1
            log.warning("TRAIL explanations failed (%s: %s); template explanations used for this step",
                        type(exc).__name__, exc)
            return self.baseline.explain(batch, forecast, index), self.baseline

    def scorer_by_name(self, name: str) -> Scorer:
        return self.scorer if self.scorer.name == name else self.baseline
