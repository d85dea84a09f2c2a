"""`trail bench score`: speed of the ONNX serving path (forecast and explanation) and its parity with PyTorch.

Prints one JSON object (keys in docs/benchmarks.md, `trail bench score`): `provider`, `forecast_items_per_s`
(forecast only, `--items` items, default 10,000, item text vectors cached as in every step after an item's
first) and `forecast_cold_items_per_s` (the first call, which also reads every item's text),
`explain_batch`, `explain_p50_ms` / `explain_p99_ms` (one `explain` call for a batch, `--new-tokens` 48),
`max_abs_diff_vs_torch` and `greedy_text_match`
(parity with the torch model the bundle came from, when its folder still exists). The items are synthetic
bucket counts with MovieLens-100K titles as texts (the catalogue ships in the recbole wheel). Heavy imports
(onnxruntime, torch for the parity check) stay inside `run`.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def add_bench_parser(benches) -> None:
    p = benches.add_parser("score", help="ONNX scorer: forecast items/s, explanation latency, parity with torch",
                           description="Benchmark a TRAIL bundle with ONNX Runtime and check it against PyTorch.")
    p.add_argument("--bundle", default="trail-tiny", help="bundle NAME under artifacts/bundles or a folder")
    p.add_argument("--providers", choices=("auto", "cpu", "cuda"), default="auto",
                   help="execution provider (auto: CUDA when it really works, else CPU)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    p.add_argument("--spin", action="store_true", help="let idle onnxruntime threads busy-wait (off by default)")
    p.add_argument("--items", type=int, default=10_000, help="items in the forecast benchmark")
    p.add_argument("--explain-batch", type=int, default=50, help="items explained per call")
    p.add_argument("--new-tokens", type=int, default=48, help="length cap of each explanation")
    p.add_argument("--repeats", type=int, default=7, help="timed explain calls (p50/p99 over them)")
    p.add_argument("--model", default=None, help="torch model for the parity check (default: the bundle's source)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check with PyTorch")
    p.add_argument("--parity-items", type=int, default=64, help="items forecast in the parity check")
    p.add_argument("--parity-explain", type=int, default=8, help="items explained (48 tokens) in the parity check")
    p.add_argument("--json", action="store_true", help="print one JSON object (the only output, always)")
    p.set_defaults(func=run)


def item_texts(n_items: int) -> list[str]:
    """n distinct texts: the MovieLens-100K catalogue ("Title (year) | genres"), cycled with an edition number
    after the first pass (every item has its own text, as in a real catalogue); synthetic titles without recbole."""
    try:
        from models.datasets import ml100k_dir, ml100k_item_texts, read_atomic_file

        catalogue = list(ml100k_item_texts(read_atomic_file(ml100k_dir() / "ml-100k.item")).values())
    except FileNotFoundError:
        catalogue = [f"Item {i} of the synthetic catalogue (1997) | Drama, Comedy" for i in range(1682)]
    return distinct_texts(catalogue, n_items)


def distinct_texts(catalogue: list[str], n: int) -> list[str]:
    """n texts cycling through `catalogue`, each pass after the first numbered (" #1", " #2", ...)."""
    return [catalogue[i % len(catalogue)] + (f" #{i // len(catalogue)}" if i >= len(catalogue) else "")
            for i in range(n)]


def synthetic_batch(n_items: int, seed: int = 0, n_buckets: int = 8, text_suffix: str = ""):
    """A FeatureBatch of n items: negative-binomial weekly counts with per-item levels, real catalogue texts."""
    import numpy as np

    from models.features import FeatureBatch
    from models.windows import WindowSpec

    rng = np.random.default_rng(seed)
    spec = WindowSpec(slot_s=86_400, bucket_s=7 * 86_400, n_buckets=n_buckets)
    level = rng.gamma(0.6, 8.0, size=(n_items, 1))
    counts = rng.poisson(level * rng.gamma(3.0, 1 / 3.0, size=(n_items, n_buckets)))
    boundary = 1_000
    last_event = np.where(counts.sum(axis=1) > 0, boundary - 1 - rng.integers(0, 7, size=n_items), -1)
    return FeatureBatch(item_ids=[f"item-{i}" for i in range(n_items)], bucket_counts=counts,
                        last_event_slot=last_event, boundary_slot=boundary, spec=spec,
                        texts=[t + text_suffix for t in item_texts(n_items)])


def percentile_ms(samples_s: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.asarray(samples_s) * 1000.0, q)), 1)


def time_forecast(scorer, batch) -> dict:
    """Items per wall second and per CPU second of scorer.forecast over the batch.

    cold: the first call, which reads every item's text (the text graph) before the forecast graph runs;
    warm: the next call over the same items, text vectors cached, as in every step after an item's first.
    The sessions are warmed up on other texts first.
    """
    scorer.forecast(synthetic_batch(64, seed=1, n_buckets=batch.spec.n_buckets, text_suffix=" (warm-up)"))
    out = {"forecast_items": len(batch)}
    for phase in ("cold", "warm"):
        started, cpu_started = time.perf_counter(), time.process_time()
        scorer.forecast(batch)
        wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        key = "forecast_items_per_s" if phase == "warm" else "forecast_cold_items_per_s"
        out[key] = round(len(batch) / wall_s)
        out[key.replace("_per_s", "_per_cpu_s")] = round(len(batch) / max(cpu_s, 1e-9))
    return out


def time_explain(scorer, batch, explain_batch: int, new_tokens: int, repeats: int) -> dict:
    """Latency of one explain call for `explain_batch` items (warm-up first), and the tokens it generated."""
    import numpy as np

    sub = batch.subset(range(explain_batch))
    forecast = scorer.forecast(sub)
    index = np.arange(len(sub))
    texts = scorer.explain(sub, forecast, index, max_new_tokens=new_tokens)
    generated = scorer.runtime.generate(scorer.explanation_rows(sub, forecast, index), scorer.features(sub), new_tokens)
    samples, cpu_samples = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        scorer.explain(sub, forecast, index, max_new_tokens=new_tokens)
        samples.append(time.perf_counter() - started)
        cpu_samples.append(time.process_time() - cpu_started)
    return {"explain_batch": len(sub), "explain_new_tokens_cap": new_tokens,
            "explain_p50_ms": percentile_ms(samples, 50), "explain_p99_ms": percentile_ms(samples, 99),
            "explain_cpu_p50_ms": percentile_ms(cpu_samples, 50),
            "explain_mean_new_tokens": round(float(np.mean([len(ids) for ids in generated])), 1),
            "explain_repeats": repeats, "explain_example": texts[0] if texts else ""}


def parity(bundle_scorer, model: str | None, batch, n_explain: int, max_new_tokens: int) -> dict:
    """Parity with the torch model (bundle's source folder unless `model`); nulls when it is not there."""
    from export.parity import parity_report
    from models.trail_scorer import CARD_JSON, load_trail_scorer, resolve_model_dir

    source = model or bundle_scorer.manifest["model"].get("source_dir", "")
    if not source or not (resolve_model_dir(source) / CARD_JSON).exists():
        return {"max_abs_diff_vs_torch": None, "greedy_text_match": None, "parity_note": f"no torch model at {source}"}
    torch_scorer = load_trail_scorer(source)
    if torch_scorer.sha256 != bundle_scorer.manifest["model"]["sha256"]:
        return {"max_abs_diff_vs_torch": None, "greedy_text_match": None,
                "parity_note": f"{source} holds other weights than the bundle was exported from"}
    report = parity_report(torch_scorer, bundle_scorer, batch, n_explain=n_explain, max_new_tokens=max_new_tokens)
    report.pop("examples")
    return report


def run(args: argparse.Namespace) -> int:
    from export.onnx_scorer import load_bundle_scorer

    load_avg = os.getloadavg()
    started = time.perf_counter()
    scorer = load_bundle_scorer(args.bundle, providers=args.providers, intra_op_threads=args.threads, spin=args.spin)
    load_s = time.perf_counter() - started
    batch = synthetic_batch(max(args.items, args.explain_batch), n_buckets=scorer.config["n_buckets"])
    result = {
        "bundle": scorer.name, "version": scorer.version, "precision": scorer.manifest["precision"],
        "provider": scorer.provider, "provider_fell_back": scorer.runtime.report.fell_back,
        "threads": args.threads or os.cpu_count(), "load_s": round(load_s, 2),
        "spin": args.spin,
        **time_forecast(scorer, batch.subset(range(args.items))),
        **time_explain(scorer, batch, args.explain_batch, args.new_tokens, args.repeats),
    }
    if not args.no_parity:
        parity_batch = batch.subset(range(min(args.parity_items, len(batch))))
        result.update(parity(scorer, args.model, parity_batch, args.parity_explain, args.new_tokens))
    result["load_avg_1m_before"] = round(load_avg[0], 2)
    result["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return 0
