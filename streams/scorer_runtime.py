"""The worker's scorer: a TRAIL ONNX bundle (or the velocity baseline), run off the event loop, with a
time budget per step, a fallback to the baseline, and hot swapping of a bundle whose manifest changes.

Why here and not in the scorer: the stream must keep ingesting while a model runs (one worker thread
runs ONNX Runtime, which releases the GIL), must never stop because a bundle is missing, corrupt or slow,
and must say so in the log. Hot reload reads, hashes and loads the new bundle in its own thread (the old
scorer keeps scoring meanwhile) and swaps it in only if it passed; a refused bundle leaves the current scorer
in place. With a pin (`scorer_sha256`, the manifest sha256 `trail export` prints) any other bundle is
refused: at start by raising `export.bundle.BundlePinError` (the worker exits), on reload with an error in
the log.

No cold start: catalogue texts handed to `offer_texts` as their records arrive are read in the background
(`streams.text_read_ahead`, in the scorer's one thread) into the worker's text vector store on disk
(`export.text_vector_store`, ``vector_dir``), which every step looks up before reading a text; a bundle
with catalogue vectors seeds that store when it is loaded. No Kafka I/O and no window logic here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from export.bundle import MANIFEST, BundlePinError, parse_sha256, resolve_bundle_dir
from models.features import FeatureBatch
from models.scoring import Scorer, VelocityScorer
from streams.text_read_ahead import TextReadAhead

log = logging.getLogger("trail.scorer")
BASELINE_NAMES = ("velocity", "baseline")


def load_bundle(name_or_path: str, intra_op_threads: int, expected_sha256: str | None = None) -> Scorer:
    """Load a TRAIL ONNX bundle (hashes, and the pin if any, verified by the loader); raises if unusable."""
    from export.onnx_scorer import load_bundle_scorer

    return load_bundle_scorer(name_or_path, providers="auto", intra_op_threads=intra_op_threads,
                              expected_sha256=expected_sha256)


def bundle_fingerprint(name_or_path: str) -> float | None:
    """mtime of the bundle's manifest, or None if there is none (a change triggers a reload)."""
    try:
        return (resolve_bundle_dir(name_or_path) / MANIFEST).stat().st_mtime
    except OSError:
        return None


def open_vector_store(folder: Path | None):
    """The text vector store in `folder`, or None (no folder, or it cannot be opened: logged, steps then read
    every new text, as without a store)."""
    if folder is None:
        return None
    from export.text_vector_store import TextVectorStore

    try:
        return TextVectorStore(folder)
    except Exception as exc:  # noqa: BLE001 - an optimisation only: never stop the stream for it
        log.error("text vector store %s cannot be opened (%s: %s); item texts are read at the step that needs "
                  "them and kept in memory only — check the folder's permissions and that no other process of "
                  "this worker id runs", folder, type(exc).__name__, exc)
        return None


class ScorerRuntime:
    def __init__(self, scorer_name: str, step_budget_s: float = 5.0, reload_check_s: float = 5.0,
                 intra_op_threads: int = 1, scorer_sha256: str | None = None, vector_dir: Path | None = None,
                 prepare_capacity: int = 100_000, prepare_batch_s: float = 0.25) -> None:
        # one ONNX thread by default: on a small box the other core keeps ingesting while a step runs
        self.scorer_name = scorer_name
        self.intra_op_threads = intra_op_threads
        self.step_budget_s = step_budget_s
        self.reload_check_s = reload_check_s
        self.scorer_sha256 = parse_sha256(scorer_sha256) if scorer_sha256 else None
        if self.scorer_sha256 and not self.uses_model:
            raise ValueError(f"a bundle pin (--scorer-sha256) needs a TRAIL bundle as --scorer, got {scorer_name!r}; "
                             "drop the pin or name the approved bundle")
        self.baseline: Scorer = VelocityScorer()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trail-scorer")
        self.reload_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trail-reload")
        self.fallbacks = 0
        self.reloads = 0
        self._fingerprint: float | None = bundle_fingerprint(scorer_name) if self.uses_model else None
        self._checked_at = 0.0
        self._reload: asyncio.Future | None = None
        self.vector_store = open_vector_store(vector_dir) if self.uses_model else None
        self.read_ahead = TextReadAhead(self.executor, self._model_scorer, prepare_capacity, prepare_batch_s)
        self.scorer: Scorer = self._load_at_start()
        self._retain_vectors()

    @property
    def uses_model(self) -> bool:
        return self.scorer_name not in BASELINE_NAMES

    @property
    def reloading(self) -> bool:
        """Whether a changed bundle is being verified and loaded in the background."""
        return self._reload is not None

    def _load_bundle(self) -> Scorer:
        """The bundle, verified (and checked against the pin): blocking, so reloads run it in a thread."""
        scorer = load_bundle(self.scorer_name, self.intra_op_threads, self.scorer_sha256)
        self._attach_vector_store(scorer)
        log.info("scoring with TRAIL bundle %s (version %s, sha256 %s, manifest sha256 %s%s)", scorer.name,
                 scorer.version, scorer.sha256[:12], scorer.manifest_sha256, ", pinned" if self.scorer_sha256 else "")
        return scorer

    def _attach_vector_store(self, scorer) -> None:
        """Give a loaded bundle the store's view of its key, seeded with the bundle's catalogue vectors."""
        if self.vector_store is None:
            return
        view = self.vector_store.view(scorer.text_key, scorer.manifest["graph"]["d_model"])
        seeded = scorer.attach_vector_store(view)
        if scorer.catalogue is not None:
            log.info("bundle %s carries the text vectors of %d catalogue texts (%d new to the store %s)",
                     scorer.name, len(scorer.catalogue.texts), seeded, self.vector_store.folder)

    def _load_at_start(self) -> Scorer:
        """The bundle, or the baseline if it is unusable; a bundle other than the pinned one raises."""
        if not self.uses_model:
            return self.baseline
        try:
            return self._load_bundle()
        except BundlePinError:
            raise   # the operator approved another bundle: refuse to start rather than serve this one
        except Exception as exc:  # noqa: BLE001 - a bad bundle must never stop the stream
            log.error("TRAIL bundle %r is unusable (%s: %s); scoring with the %s baseline until it is fixed",
                      self.scorer_name, type(exc).__name__, exc, self.baseline.name)
            return self.baseline

    def _finish_reload(self, done: asyncio.Future) -> None:
        """Swap in the reloaded scorer, or keep the current one and log why the new bundle was refused."""
        try:
            scorer = done.result()
        except Exception as exc:  # noqa: BLE001 - includes BundlePinError: never stop the stream
            log.error("changed TRAIL bundle %r refused (%s: %s); still scoring with %s", self.scorer_name,
                      type(exc).__name__, exc, self.scorer.name)
            return
        self.scorer = scorer
        self.reloads += 1
        self._retain_vectors()

    def _retain_vectors(self) -> None:
        """Drop the stored text vectors of every bundle but the one in service (bounded disk)."""
        key = getattr(self.scorer, "text_key", None)
        if self.vector_store is not None and key is not None:
            self.vector_store.retain(key)

    async def maybe_reload(self) -> None:
        """Start loading a bundle whose manifest changed (or appeared) in a thread; swap it in once it passed.

        Cheap to call often: a stat of the manifest every `reload_check_s`; the hashing and session building
        run off the event loop, and the current scorer keeps scoring until the new one is ready.
        """
        if self._reload is not None:
            if self._reload.done():
                self._finish_reload(self._reload)
                self._reload = None
            return
        if not self.uses_model or time.monotonic() - self._checked_at < self.reload_check_s:
            return
        self._checked_at = time.monotonic()
        fingerprint = bundle_fingerprint(self.scorer_name)
        if fingerprint is not None and fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            log.info("bundle %r changed on disk: reloading", self.scorer_name)
            self._reload = asyncio.get_running_loop().run_in_executor(self.reload_executor, self._load_bundle)

    async def forecast(self, batch: FeatureBatch) -> tuple[np.ndarray, Scorer]:
        """Forecasts and the scorer that made them (the baseline if the model failed or ran over budget)."""
        await self.maybe_reload()
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

    # --- reading catalogue texts ahead of the steps ---------------------------------------------------------

    def _model_scorer(self):
        return None if self.scorer is self.baseline else self.scorer

    def offer_texts(self, texts: list[str]) -> None:
        """Queue item texts (catalogue records as they arrive) to be read in the background; on the event loop."""
        self.read_ahead.offer(texts)

    async def wait_prepared(self) -> None:
        """Until every queued text has been read (benches and tests)."""
        await self.read_ahead.wait()

    def text_vector_counters(self) -> dict[str, int]:
        """For the status file: texts read by steps / ahead (the bundle in service, since it was loaded),
        texts queued, texts dropped from a full queue."""
        return {"text_vectors_read_in_steps": getattr(self.scorer, "texts_read", 0),
                "text_vectors_read_ahead": getattr(self.scorer, "texts_read_ahead", 0),
                "text_vectors_pending": self.read_ahead.pending, "text_vectors_dropped": self.read_ahead.dropped}

    def close(self) -> None:
        """Stop the scorer threads and close the text vector store (benches reopen it as a restart would)."""
        self.executor.shutdown(wait=True)
        self.reload_executor.shutdown(wait=True)
        if self.vector_store is not None:
            self.vector_store.close()
            self.vector_store = None
