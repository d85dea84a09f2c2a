"""Worker configuration: topic names, partition count, window geometry, batching and scoring knobs.

One frozen dataclass, built from CLI flags by `streams.cli.worker` and from code by tests and benches.
No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from infra.kafka_config import KafkaSettings
from models.windows import WindowSpec
from streams.events import MIN_TS_MS


@dataclass(frozen=True)
class Topics:
    clicks: str = "clicks"
    items: str = "items"
    dlq: str = "clicks-dlq"
    trending: str = "trending-items"


@dataclass(frozen=True)
class WorkerConfig:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: Topics = field(default_factory=Topics)
    app_id: str = "trail"
    partitions: int = 4
    spec: WindowSpec = field(default_factory=WindowSpec)
    top_k: int = 10
    max_candidates: int = 10_000             # items per partition a step considers (heavy hitters)
    data_dir: Path = Path("artifacts/worker")
    internal_key_file: Path | None = None    # internal-message keys (infra.internal_auth); None: env, else default
    batch_max_messages: int = 20_000
    batch_within_s: float = 0.1              # a stage-1 batch ends after this long: each step waits for one
    fetch_max_wait_ms: int = 100             # a fetch the broker may hold (faust's 1,500 ms: tansu holds it all)
    deltas_batch_max: int = 1000             # stage 2: deltas messages per batch (table partitions apply in parallel)
    deltas_batch_within_s: float = 0.02      # ... and the longest a batch waits to fill
    batch_drain: bool = True                 # one flow-control wait per fetched batch (streams.batch_drain)
    dedup_capacity: int = 1_000_000          # recent event ids remembered per worker (bounded memory)
    min_ts_ms: int = MIN_TS_MS               # earlier event times are rejected (2000-01-01)
    max_future_s: int = 86_400               # events this far beyond wall-clock time are rejected
    source_idle_timeout_s: float = 10.0      # a source partition this quiet (wall clock) stops holding the watermark
    recovery_stall_s: float = 60.0           # recovery without progress this long is logged as stalled
    recovery_give_up_s: float = 300.0        # ... and this long stops the worker (exit 70) for a restart; 0: never
    idle_flush_s: float = 0.0                # >0: once no input for this long and every input partition is read to
                                             # its end (all declared idle), score what the max seen time allows
    scorer: str = "velocity"                 # "velocity" or a TRAIL bundle NAME|DIR
    scorer_sha256: str | None = None         # the approved bundle's manifest sha256; any other is refused
    step_budget_s: float = 5.0               # a model step slower than this falls back to the baseline
    reload_check_s: float = 5.0              # how often (at a step) the bundle's manifest is checked for a change
    embedded_broker_fix: str = "auto"        # auto|on|off: the tansu end-offset shim
    worker_id: str = "w1"
    input_incarnation: str = ""              # the clicks topic's id: applied input offsets are kept per incarnation
    log_level: str = "info"
    metrics_port: int = 0                    # >0: /metrics, /healthz, /readyz and the live page on this port
    metrics_host: str = "127.0.0.1"

    @property
    def idle_declare_after_s(self) -> float:
        """How long an input partition must be silent (and read to its end) before its reader declares it idle:
        --source-idle-timeout-s, or --idle-flush-s when shorter (the idle flush waits for every partition's
        declaration); 0: never."""
        positive = [s for s in (self.source_idle_timeout_s, self.idle_flush_s) if s > 0]
        return min(positive) if positive else 0.0

    @property
    def table_name(self) -> str:
        return "slot-counts"

    # internal topics, named after the app id like faust's changelogs: pre-aggregated (item, slot) deltas
    # routed to the item's partition, and per-partition top-K candidates for the merge step (1 partition)
    @property
    def deltas_topic(self) -> str:
        return f"{self.app_id}-deltas"

    @property
    def candidates_topic(self) -> str:
        return f"{self.app_id}-candidates"

    @property
    def status_path(self) -> Path:
        return self.data_dir / self.worker_id / "status.json"

    @property
    def text_vector_dir(self) -> Path:
        """The worker's text vectors (`export.text_vector_store`): beside, not inside, the faust state (v1), so
        state moved aside for another cluster keeps them; they depend on the bundle and the texts only."""
        return self.data_dir / self.worker_id / "text-vectors"
