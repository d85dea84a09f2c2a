"""ONNX Runtime serving of a TRAIL bundle: sessions, batched forecasts, batched greedy generation.

- `create_session`: CUDA when it really works, else CPU, and says which. onnxruntime-gpu accepts a CUDA
  request on a machine without a usable GPU, logs an error and silently runs on CPU; the fallback is
  detected by comparing `session.get_providers()` with the request, logged, and reported.
- `TrailRuntime.text_vectors`: the text graph over item texts, sorted by length and chunked (little padding);
  `models.text_vectors.TextVectorCache` keeps each item text's vector (bounded, least recently used out),
  so a step only reads the texts of items it has not seen; with a `vector_store` attached (the worker's
  RocksDB one, `export.text_vector_store`) a text missing from memory is looked up there before it is read,
  and what is read is stored. `prepare_texts` reads texts ahead of need (catalogue records as they arrive).
  `texts_read` / `texts_read_ahead` count texts run through the text graph by steps / ahead of need.
- `TrailRuntime.forecast_log1p`: the forecast graph ([numeric features, text vector] -> log1p) in one run.
- `TrailRuntime.generate`: greedy decoding with the step graph and its key/value cache, the loop the torch
  model decodes with too (`models.prompts.greedy_decode`).
Inputs come from `models.prompts` (numpy, shared with the torch path). Sessions are built from graph bytes a
caller has verified (`export.bundle.VerifiedBundle`), never from the bundle's paths, so a file swapped on disk
after the check is never loaded. No torch here (the stream imports this); no bundle verification here (`export.bundle`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.prompts import greedy_decode, left_pad
from models.text_vectors import TextVectorCache, VectorStore, read_in_length_order, text_digest

if TYPE_CHECKING:
    from export.bundle import VerifiedBundle

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_CHOICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ProviderReport:
    """What was asked for and what the session really runs on."""

    requested: str               # "auto" | "cpu" | "cuda"
    active: str                  # the first provider of session.get_providers()
    fell_back: bool              # CUDA was asked for (explicitly or by auto) and the session runs on CPU
    reason: str = ""

    @property
    def device(self) -> str:
        return "cuda" if self.active == CUDA else "cpu"


def nvidia_device_present() -> bool:
    """Whether the kernel exposes an NVIDIA device (cheap; says nothing about the CUDA libraries)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def provider_list(providers: str) -> list[str]:
    """The execution providers to ask onnxruntime for.

    cpu: CPU only. cuda: CUDA first (a fallback is detected after the session is made). auto: CUDA first when
    this onnxruntime build has it and an NVIDIA device exists, else CPU.
    """
    import onnxruntime as ort

    if providers not in PROVIDER_CHOICES:
        raise ValueError(f"providers must be one of {PROVIDER_CHOICES}, got {providers!r}")
    if providers == "cuda" or (
        providers == "auto" and CUDA in ort.get_available_providers() and nvidia_device_present()
    ):
        return [CUDA, CPU]
    return [CPU]


def session_options(intra_op_threads: int = 0, spin: bool = False):
    """Sequential execution, all graph optimisations, `intra_op_threads` (0: one per core).

    spin=False stops idle intra-op threads from busy-waiting: on the shared 2-core machine that measured
    ~35 % more forecasts per second and ~30 % less CPU time (docs/onnx-serving.md, "Serving").
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3   # onnxruntime's own CUDA-missing error; the fallback is reported below
    return options


def preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from pip's nvidia-* wheels (as torch installs them) when present; they are not on the
    loader's path, so without this a CUDA session falls back to CPU on machines that do have them."""
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls(directory="")
        except Exception as exc:   # no such wheels: the system's libraries (or the fallback) decide
            log.debug("onnxruntime.preload_dlls: %s", exc)


def create_session(graph: Path | bytes, providers: str = "auto", intra_op_threads: int = 0, spin: bool = False,
                   name: str = ""):
    """(onnxruntime.InferenceSession, ProviderReport) for one graph; a CUDA request that fell back is logged.

    `graph` is the model's bytes (as verified: what the serving path passes) or a path; `name` labels the log.
    """
    import onnxruntime as ort

    wanted = provider_list(providers)
    if wanted[0] == CUDA:
        preload_cuda_libraries()
    options = session_options(intra_op_threads, spin)
    model = graph if isinstance(graph, bytes) else str(graph)
    label = name or ("graph" if isinstance(graph, bytes) else Path(graph).name)
    session = ort.InferenceSession(model, sess_options=options, providers=wanted)
    active = session.get_providers()[0]
    fell_back = wanted[0] == CUDA and active != CUDA
    reason = ""
    if fell_back:
        reason = (f"asked for {CUDA} ({providers}) but the session runs on {active}: no usable CUDA device or "
                  "CUDA/cuDNN libraries on this machine")
        log.warning("%s: %s", label, reason)
    return session, ProviderReport(requested=providers, active=active, fell_back=fell_back, reason=reason)


def read_text_rows(text_session, rows: list[list[int]], chunk: int = 256) -> np.ndarray:
    """Text vectors [n, d] of token rows through a text graph session, chunked by length (little padding).

    The one way vectors are read: the serving runtime and `trail export --catalogue` both call it."""
    def read_chunk(part: list[list[int]]) -> np.ndarray:
        ids, mask = left_pad(part)
        return text_session.run(["text_vec"], {"input_ids": ids, "attention_mask": mask})[0]

    return read_in_length_order(rows, chunk, read_chunk)


@dataclass(frozen=True)
class Geometry:
    """Shapes the graphs expect (from the bundle manifest)."""

    n_layers: int
    n_kv_heads: int
    head_dim: int
    n_prefix: int
    n_features: int        # width of one numeric prefix row (item features + prefix one-hot)

    @classmethod
    def from_manifest(cls, manifest: dict, step_session) -> Geometry:
        """Cache shapes from the manifest; the numeric prefix width from the graph's own input."""
        g, t = manifest["graph"], manifest["trail_config"]
        numeric = next(i for i in step_session.get_inputs() if i.name == "numeric_prefix")
        return cls(g["n_layers"], g["n_kv_heads"], g["head_dim"], t["n_prefix"], int(numeric.shape[2]))


class TrailRuntime:
    """The step, text and forecast graphs of one bundle behind numpy calls."""

    def __init__(self, step_session, text_session, forecast_session, geometry: Geometry,
                 report: ProviderReport) -> None:
        self.step_session = step_session
        self.text_session = text_session
        self.forecast_session = forecast_session
        self.geometry = geometry
        self.report = report
        self.present_names = [o.name for o in step_session.get_outputs()][1:]
        self.past_names = [name.replace("present_", "past_") for name in self.present_names]
        self.copy_path = any(i.name == "context_ids" for i in step_session.get_inputs())   # see models.trail
        self.text_cache = TextVectorCache()
        self.vector_store: VectorStore | None = None   # attached by the worker (`streams.scorer_runtime`)
        self.texts_read = 0          # texts run through the text graph when a step needed them
        self.texts_read_ahead = 0    # ... by `prepare_texts`, before any step needed them

    @classmethod
    def open(cls, bundle: VerifiedBundle, providers: str = "auto", intra_op_threads: int = 0,
             spin: bool = False) -> TrailRuntime:
        """Sessions from the verified graph bytes of a bundle (`export.bundle.verify_bundle`), not from its files."""
        sessions, reports = {}, {}
        for key in ("step", "text", "forecast"):
            sessions[key], reports[key] = create_session(bundle.runtime_bytes(key), providers, intra_op_threads,
                                                         spin, name=bundle.manifest["graph"][key])
        return cls(sessions["step"], sessions["text"], sessions["forecast"],
                   Geometry.from_manifest(bundle.manifest, sessions["step"]), reports["step"])

    def read_texts(self, rows: list[list[int]], chunk: int = 256) -> np.ndarray:
        """Text vectors [n, d] of token rows ("<|im_start|> item text"), chunked by length (little padding)."""
        return read_text_rows(self.text_session, rows, chunk)

    def text_vectors(self, texts: list[str], text_rows, chunk: int = 256) -> np.ndarray:
        """Vectors [n, d] of item texts: cached ones looked up, then stored ones, the others read (and stored);
        text_rows(texts) -> token rows."""
        return self.text_cache.vectors(texts, lambda missing: self._stored_or_read(missing, text_rows, chunk))

    def _stored_or_read(self, texts: list[str], text_rows, chunk: int) -> np.ndarray:
        """Vectors [n, d] of distinct texts missing from memory: from the store where it has them, else read."""
        found, unread = self._look_up(texts)
        if unread:
            vecs = self._read_and_store([texts[i] for i in unread], text_rows, chunk)
            self.texts_read += len(unread)
            for i, vec in zip(unread, vecs, strict=True):
                found[i] = vec
        return np.stack(found)

    def prepare_texts(self, texts: list[str], text_rows, chunk: int = 256,
                      limit: int | None = None) -> tuple[int, list[str]]:
        """Read at most `limit` of the texts without a vector yet, ahead of any step (into the store, or into
        memory without one): (how many were read, the texts still without a vector). Looking a text up is
        cheap and reading it is not, so the limit counts reads only. Runs in the scorer's thread, like a step."""
        missing = self.text_cache.missing(texts)
        _, unread_at = self._look_up(missing)
        unread = [missing[i] for i in unread_at]
        now, later = (unread, []) if limit is None else (unread[:limit], unread[limit:])
        if now and self.vector_store is None:
            self.text_cache.put(now, self.read_texts(text_rows(now), chunk))
        elif now:   # stored, not cached: a catalogue larger than the cache must not evict the step's items
            self._read_and_store(now, text_rows, chunk)
        self.texts_read_ahead += len(now)
        return len(now), later

    def _look_up(self, texts: list[str]) -> tuple[list[np.ndarray | None], list[int]]:
        """(stored vector or None per text, indexes of the texts without one)."""
        if self.vector_store is None:
            return [None] * len(texts), list(range(len(texts)))
        found = self.vector_store.get([text_digest(t) for t in texts])
        return found, [i for i, vec in enumerate(found) if vec is None]

    def _read_and_store(self, texts: list[str], text_rows, chunk: int) -> np.ndarray:
        vecs = self.read_texts(text_rows(texts), chunk)
        if self.vector_store is not None:
            self.vector_store.put([text_digest(t) for t in texts], vecs)
        return vecs

    def forecast_log1p(self, features: np.ndarray, text_vec: np.ndarray) -> np.ndarray:
        """log1p next-bucket counts of every row: one run of the forecast graph."""
        feeds = {"features": np.ascontiguousarray(features, dtype=np.float32),
                 "text_vec": np.ascontiguousarray(text_vec, dtype=np.float32)}
        return self.forecast_session.run(["forecast_log1p"], feeds)[0].astype(np.float64)

    def empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        g = self.geometry
        empty = np.zeros((batch, g.n_kv_heads, 0, g.head_dim), dtype=np.float32)
        return dict.fromkeys(self.past_names, empty)

    def step(self, feeds: dict[str, np.ndarray], cache: dict[str, np.ndarray]):
        """One run of the step graph: (logits [B, V], present cache as the next past)."""
        outputs = self.step_session.run(None, {**feeds, **cache})
        return outputs[0], dict(zip(self.past_names, outputs[1:], strict=True))

    def generate(self, rows: list[list[int]], features: np.ndarray, max_new_tokens: int) -> list[list[int]]:
        """Greedy token ids per row (ending with <|im_end|> when written), at most max_new_tokens each:
        `models.prompts.greedy_decode` over the step graph, a row that has written <|im_end|> leaving the batch."""
        cache = self.empty_cache(len(rows))

        def step(feeds: dict[str, np.ndarray], keep: np.ndarray | None) -> np.ndarray:
            nonlocal cache
            if keep is not None:
                cache = {name: value[keep] for name, value in cache.items()}
            logits, cache = self.step(feeds, cache)
            return logits

        return greedy_decode(step, rows, features, self.geometry.n_prefix, max_new_tokens, self.copy_path)
