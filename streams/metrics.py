"""The worker's Prometheus metrics: what `/metrics` exposes and how each value is read.

Counters are not kept twice: `PipelineCollector` reads the worker's own `Counters` (the ones status.json
is written from) and the scorer runtime's at every scrape, so a scraped value can never drift from the
status file. Gauges (watermark lag, consumer lag, candidates, scoring queue, readiness) are read at
scrape time too. Only the latency histograms are observed as they happen: `streams.app` times its
forecast, explain and step code with `FORECAST_SECONDS.time()` and friends.

Names follow the Prometheus conventions: `trail_` prefix, `_total` counters, base units (`_seconds`).
No HTTP serving here (`streams.http_server`) and no Kafka I/O.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.health import readiness

# one registry per process (one worker per process): the histograms below plus the pipeline's collector
REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=REGISTRY)   # process_cpu_seconds_total, process_resident_memory_bytes, ...

# steps take from milliseconds (baseline) to seconds (a model explaining 50 items); the budget is 5 s
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FORECAST_SECONDS = Histogram("trail_forecast_seconds", "Forecast of one partition's candidates at one boundary",
                             buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
EXPLAIN_SECONDS = Histogram("trail_explain_seconds", "Global top-K of one step: rank, explain, check explanations",
                            buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
STEP_SECONDS = Histogram("trail_step_seconds", "One emitted step: explain its top-K, publish and await the acks",
                         buckets=LATENCY_BUCKETS_S, registry=REGISTRY)

# (metric name without _total, Counters field, help); the status file carries the same fields
COUNTERS = (
    ("trail_events", "events", "Valid, new click events accepted (after validation and de-duplication)"),
    ("trail_events_counted", "counted", "Events added to the window counts (RocksDB table)"),
    ("trail_duplicate_events", "duplicates", "Events dropped as repeated event_id"),
    ("trail_late_events", "late", "Events counted after their slot was already scored"),
    ("trail_redelivered_skipped", "redelivered_skipped", "Re-delivered input entries skipped (already applied)"),
    ("trail_dlq_internal_records", "dlq_internal", "Internal or catalogue messages rejected to the DLQ"),
    ("trail_dlq_bad_signature_records", "dlq_bad_signature",
     "Internal messages without a valid HMAC tag (of trail_dlq_internal_records)"),
    ("trail_catalogue_items", "catalogue_items", "Catalogue records stored from the items topic"),
    ("trail_steps", "steps_scored", "Global steps emitted by the merge step"),
    ("trail_rebalances", "assignments", "Partition assignments received (rebalances this worker took part in)"),
    ("trail_trend_records", "trends_emitted", "Trend records published on the trending topic"),
    ("trail_explanations_generated", "explanations_generated", "Explanations written by the TRAIL model"),
    ("trail_explanations_replaced", "explanations_replaced",
     "Generated explanations that failed the faithfulness check (template published)"),
)


class PipelineCollector(Collector):
    """Reads a running `streams.app.Pipeline` at scrape time."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        yield from self.counters()
        yield from self.scorer_metrics()
        yield from self.partition_gauges()
        yield from self.health_gauges()

    def counters(self) -> Iterator[Metric]:
        counters = self.pipeline.counters
        for name, attribute, documentation in COUNTERS:
            yield CounterMetricFamily(name, documentation, value=getattr(counters, attribute))
        dlq = CounterMetricFamily("trail_dlq_records", "Click messages or events rejected to the DLQ, by reason code",
                                  labels=["reason"])
        for reason, count in sorted(counters.dlq_by_reason.items()):
            dlq.add_metric([reason], count)
        yield dlq

    def scorer_metrics(self) -> Iterator[Metric]:
        runtime = self.pipeline.runtime
        scorer = runtime.scorer
        yield CounterMetricFamily("trail_scorer_fallbacks", "Forecasts or explanations the baseline had to take over",
                                  value=runtime.fallbacks)
        yield CounterMetricFamily("trail_scorer_reloads", "Changed bundles swapped in without a restart",
                                  value=runtime.reloads)
        texts = runtime.text_vector_counters()
        yield CounterMetricFamily("trail_text_vectors_read_in_steps", "Item texts read by the model inside a step "
                                  "(not ahead: each one delayed that step)", value=texts["text_vectors_read_in_steps"])
        yield CounterMetricFamily("trail_text_vectors_read_ahead", "Item texts read in the background as their "
                                  "catalogue records arrived", value=texts["text_vectors_read_ahead"])
        yield CounterMetricFamily("trail_text_vectors_dropped", "Item texts not queued for reading ahead (queue "
                                  "full; a step reads them if it needs them)", value=texts["text_vectors_dropped"])
        yield GaugeMetricFamily("trail_text_vectors_pending", "Item texts queued to be read ahead",
                                value=texts["text_vectors_pending"])
        info = InfoMetricFamily("trail_scorer", "The scorer serving now (bundle sha256: its manifest's sha256)")
        info.add_metric([], {"name": scorer.name, "version": str(scorer.version), "model_sha256": scorer.sha256,
                             "bundle_sha256": getattr(scorer, "manifest_sha256", "")})
        yield info

    def partition_gauges(self) -> Iterator[Metric]:
        pipeline = self.pipeline
        now_s = time.time()
        lag = GaugeMetricFamily("trail_watermark_lag_seconds", "Wall clock minus the partition's event-time "
                                "watermark (huge for replays of old logs: it is event time)", labels=["partition"])
        watermark = GaugeMetricFamily("trail_watermark_seconds", "The partition's event-time watermark (unix time)",
                                      labels=["partition"])
        candidates = GaugeMetricFamily("trail_candidates", "Items the partition's next step considers",
                                       labels=["partition"])
        for partition, state in sorted(pipeline.states.items()):
            candidates.add_metric([str(partition)], len(state.hitters))
            watermark_s = partition_watermark_s(state)
            if watermark_s is not None:
                watermark.add_metric([str(partition)], watermark_s)
                lag.add_metric([str(partition)], now_s - watermark_s)
        yield from (lag, watermark, candidates)
        yield GaugeMetricFamily("trail_scoring_queue_depth", "Partition steps waiting for the scorer",
                                value=pipeline.score_queue.qsize())
        yield consumer_lag(pipeline)

    def health_gauges(self) -> Iterator[Metric]:
        state = readiness(self.pipeline)
        yield GaugeMetricFamily("trail_ready", "1 when /readyz answers ready", value=int(state.ready))
        yield GaugeMetricFamily("trail_recovering", "1 while table recovery runs", value=int(state.recovering))
        yield GaugeMetricFamily("trail_assigned_partitions", "Clicks partitions this worker owns",
                                value=len(state.assigned))


def partition_watermark_s(state) -> float | None:
    """min over source partitions of their max event time, minus the allowed lateness (seconds); None
    before any source reported. Read without side effects (`PartitionState.watermark_slot` records)."""
    if not state.source_max_ts_ms:
        return None
    return min(state.source_max_ts_ms.values()) / 1000 - state.spec.allowed_lateness_s


def consumer_lag(pipeline) -> GaugeMetricFamily:
    """Clicks messages not read yet per owned partition: the fetch's high watermark minus the next offset.

    Both come from the consumer's fetch responses (no broker round trip). faust keeps the last read offset
    in a private map; it is read here only. Against the embedded broker the high watermark may be off by
    a batch (tansu reports the start of the last batch + 1).
    """
    lag = GaugeMetricFamily("trail_consumer_lag_messages", "Input messages behind the high watermark",
                            labels=["topic", "partition"])
    consumer = pipeline.app.consumer
    read_offsets = getattr(consumer, "_read_offset", {})
    topic = pipeline.config.topics.clicks
    for tp in list(read_offsets):
        if tp.topic != topic or read_offsets.get(tp) is None:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet, or revoked meanwhile: no sample this scrape
            continue
        if highwater is not None:
            lag.add_metric([tp.topic, str(tp.partition)], max(0, highwater - read_offsets[tp] - 1))
    return lag


def register_pipeline(pipeline) -> None:
    """Expose `pipeline` on REGISTRY (once per process: one worker per process)."""
    REGISTRY.register(PipelineCollector(pipeline))


def exposition() -> bytes:
    """The text exposition format of everything on REGISTRY."""
    return generate_latest(REGISTRY)
