"""`trail bench step`: the cost of one scoring step with a TRAIL bundle, and what it does to ingestion.

Part 1 times full steps in-process the way the worker runs them (`ScorerRuntime`: ONNX off the event
loop): forecast N candidates, take the top K, explain them, check the explanations. The first step reads
every candidate's text (`first_step_ms`); later steps find the text vectors cached, as a worker does for
every item after its first step. With `--warm-catalogue` the candidates' catalogue records arrive first, as
in a worker (`ScorerRuntime.offer_texts` reads them in the background into a text vector store on disk),
then the first step runs (`first_to_warm_ratio`: first step / step p50), then the runtime is closed and
opened again on the same store, as a restart would, and times its first step. Part 2 runs the worker's ingest path
(decode + validate + pre-aggregate + ring merge into a real RocksDB) on one event loop for a fixed time,
once alone and once while steps run back to back in the scorer thread, and reports the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from infra.errors import CommandError
from models.features import FeatureBatch
from models.windows import WindowSpec


def add_bench_parser(benches) -> None:
    parser = benches.add_parser("step", help="scoring-step latency with a bundle, and ingestion while it runs",
                                description=__doc__)
    parser.add_argument("--bundle", default="trail-tiny", help="TRAIL bundle NAME|DIR")
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--explain", type=int, default=50, help="explanations per step (the top-K)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--ingest-s", type=float, default=8.0, help="seconds per ingestion measurement")
    parser.add_argument("--warm-catalogue", action="store_true",
                        help="deliver the candidates' catalogue before the first step (read in the background into "
                        "a text vector store), then time the first step, and the first step after a restart")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def synthetic_batch(n: int, spec: WindowSpec, seed: int = 0) -> FeatureBatch:
    from export.bench_score import distinct_texts
    from models.datasets import load_dataset

    rng = np.random.default_rng(seed)
    titles = list(load_dataset("ml-100k").items.values())
    counts = rng.poisson(rng.gamma(1.0, 8.0, size=(n, 1)), size=(n, spec.n_buckets))
    boundary = 20_000
    return FeatureBatch([f"i{k}" for k in range(n)], counts, np.full(n, boundary - 1), boundary, spec,
                        texts=distinct_texts(titles, n))


async def one_step(runtime, batch: FeatureBatch, k: int) -> dict:
    from streams.scoring_loop import grounded_explanations, top_k_order

    started = time.perf_counter()
    forecast, scorer = await runtime.forecast(batch)
    forecast_done = time.perf_counter()
    chosen = top_k_order(batch.item_ids, forecast, k)
    texts, writer = await runtime.explain(scorer, batch, forecast, chosen)
    grounded_explanations(batch, forecast, chosen, texts, writer is not runtime.baseline, runtime.baseline)
    done = time.perf_counter()
    return {"step_ms": (done - started) * 1000, "forecast_ms": (forecast_done - started) * 1000,
            "explain_ms": (done - forecast_done) * 1000, "scorer": scorer.name}


def ingest_messages(n_messages: int, envelope: int, seed: int = 1) -> list[tuple[int, int, bytes]]:
    from streams.bench_ingest import synthetic_events

    events = synthetic_events(n_messages * envelope, 100_000, seed)
    return [(0, i, orjson.dumps(events[i * envelope:(i + 1) * envelope])) for i in range(n_messages)]


async def ingest_for(seconds: float, messages, spec: WindowSpec, db_dir: str) -> float:
    """Events/s of the worker's ingest path (stage 1 + stage 2 into RocksDB), yielding to the loop per batch."""
    import rocksdict

    from streams.deltas import DeltaRouter
    from streams.state import PartitionState

    db = rocksdict.Rdict(db_dir, options=rocksdict.Options(raw_mode=True))
    router = DeltaRouter(1, spec, 1_000_000)
    state = PartitionState(0, db, spec, n_sources=1)
    events = offset = position = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = messages[position:position + 50]
        position = (position + 50) % (len(messages) - 50)
        routed = router.route([(0, offset + i, value) for i, (_, _, value) in enumerate(batch)], max_ts_ms=10**15)
        offset += len(batch)
        for columns in routed.deltas.values():
            update = state.apply_deltas(0, routed.watermarks[0], columns)
            write = rocksdict.WriteBatch(raw_mode=True)
            for key, value in update.writes.items():
                write.put(key, value)
            db.write(write)
            state.accept(update)
        events += routed.events
        await asyncio.sleep(0)
    db.close()
    return events / (time.perf_counter() - started)


def open_runtime(bundle: str, vector_dir: Path | None):
    from streams.scorer_runtime import ScorerRuntime

    runtime = ScorerRuntime(bundle, step_budget_s=120, vector_dir=vector_dir)
    if runtime.scorer is runtime.baseline:
        raise CommandError(f"bundle {bundle!r} could not be loaded (see the log); build it with `trail export`")
    return runtime


async def deliver_catalogue(runtime, texts: list[str]) -> dict:
    """The catalogue arrives before the clicks: its texts are read in the background, as a worker reads them."""
    started = time.perf_counter()
    runtime.offer_texts(texts)
    await runtime.wait_prepared()
    return {"catalogue_texts": runtime.scorer.texts_read_ahead,
            "catalogue_read_s": round(time.perf_counter() - started, 2)}


async def restart_on(runtime, args: argparse.Namespace, batch: FeatureBatch, vector_dir: Path):
    """(first step of a runtime opened again on the same text vector store, that runtime)."""
    runtime.close()
    again = open_runtime(args.bundle, vector_dir)
    step = await one_step(again, batch, args.explain)
    return {"first_step_after_restart_ms": round(step["step_ms"], 1),
            "texts_read_after_restart": again.scorer.texts_read}, again


async def time_steps(args: argparse.Namespace, batch: FeatureBatch, vector_dir: Path | None):
    """(step figures, the runtime to keep scoring with): the first step, warm steps, and with
    --warm-catalogue the catalogue delivered first and a restart after."""
    runtime = open_runtime(args.bundle, vector_dir)
    catalogue = await deliver_catalogue(runtime, batch.texts) if vector_dir else {}
    first = await one_step(runtime, batch, args.explain)  # cold: reads every candidate's text not read ahead
    read_in_first = runtime.scorer.texts_read
    steps = [await one_step(runtime, batch, args.explain) for _ in range(args.steps)]
    step_ms = [s["step_ms"] for s in steps]
    restart, runtime = await restart_on(runtime, args, batch, vector_dir) if vector_dir else ({}, runtime)
    p50 = statistics.median(step_ms)
    return {
        "mode": "warm-catalogue" if vector_dir else "cold",
        **catalogue,
        "first_step_ms": round(first["step_ms"], 1),
        "texts_read_in_first_step": read_in_first,
        "step_p50_ms": round(p50, 1),
        "step_max_ms": round(max(step_ms), 1),
        "first_to_warm_ratio": round(first["step_ms"] / p50, 2),
        "forecast_p50_ms": round(statistics.median(s["forecast_ms"] for s in steps), 1),
        "explain_p50_ms": round(statistics.median(s["explain_ms"] for s in steps), 1),
        **restart,
    }, runtime


async def measure(args: argparse.Namespace) -> dict:
    spec = WindowSpec()
    batch = synthetic_batch(args.candidates, spec)
    with tempfile.TemporaryDirectory(prefix="trail-bench-vectors-") as vectors:
        steps, runtime = await time_steps(args, batch, Path(vectors) if args.warm_catalogue else None)
        ingest = await ingest_figures(runtime, batch, args, spec)
        runtime.close()
    provider = getattr(runtime.scorer, "provider", "unknown")
    return {
        "bench": "step",
        "bundle": runtime.scorer.name,
        "provider": provider() if callable(provider) else provider,
        "candidates": args.candidates,
        "explained": args.explain,
        **steps,
        **ingest,
        "scorer_fallbacks": runtime.fallbacks,
    }


async def ingest_figures(runtime, batch: FeatureBatch, args: argparse.Namespace, spec: WindowSpec) -> dict:
    """Ingestion alone, then while steps run back to back in the scorer thread."""
    messages = ingest_messages(2000, 100)
    with tempfile.TemporaryDirectory() as alone_dir, tempfile.TemporaryDirectory() as busy_dir:
        alone = await ingest_for(args.ingest_s, messages, spec, alone_dir)
        stop = asyncio.Event()

        async def keep_scoring() -> int:
            n = 0
            while not stop.is_set():
                await one_step(runtime, batch, args.explain)
                n += 1
            return n

        scoring = asyncio.create_task(keep_scoring())
        busy = await ingest_for(args.ingest_s, messages, spec, busy_dir)
        stop.set()
        steps_during = await scoring
    return {
        "ingest_alone_events_per_s": round(alone),
        "ingest_while_scoring_events_per_s": round(busy),
        "ingest_ratio": round(busy / alone, 3),
        "steps_during_ingest": steps_during,
    }


def run(args: argparse.Namespace) -> int:
    import logging

    from streams.bench_ingest import machine_description

    logging.basicConfig(level="WARNING")
    result = asyncio.run(measure(args))
    result["machine"] = machine_description()
    print(orjson.dumps(result).decode())
    return 0
