"""`trail chaos`: replay a seeded click log through real workers and a real broker while faults happen, then
check every emitted step against a straight recount; the command line and the report (JSON or a short
summary; progress on stderr). The run itself is `streams.chaos_run`, the schedule and recount `streams.chaos`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from streams import chaos
from streams.chaos_run import (
    DEGRADED_WAIT_S,
    N_BUCKETS,
    PARTITIONS,
    RECOVERY_KINDS,
    SLOTS_PER_BUCKET,
    Broker,
    ChaosRun,
    WorkerPool,
    utc_date,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "chaos", help="replay a log under seeded faults and check every step against a recount",
        description="Start a durable embedded broker and workers, replay a seeded synthetic click log while "
        "workers are SIGKILLed (also mid catch-up), added and removed, the broker is restarted, and repeated "
        "event ids and malformed messages are planted; then compare every emitted step with a straight "
        "recount of the de-duplicated log. Exit 0 when nothing was lost, double counted or missing.")
    parser.add_argument("--faults", type=int, default=20, help="faults in the schedule")
    parser.add_argument("--kinds", default=",".join(chaos.FAULT_KINDS),
                        help="comma-separated fault kinds to draw from (default: all; with --bootstrap, no "
                        "broker_restart)")
    parser.add_argument("--events", type=int, default=60_000, help="events in the synthetic log")
    parser.add_argument("--seed", type=int, default=1, help="seeds the log, the schedule and the victims")
    parser.add_argument("--items", type=int, default=16, help="distinct items (top-k is set to this: all checked)")
    parser.add_argument("--days", type=int, default=35, help="daily slots the log spans")
    parser.add_argument("--workers", type=int, default=2, help="workers at the start (1-4)")
    parser.add_argument("--chunk", type=int, default=500, help="events per produced chunk")
    parser.add_argument("--big-chunk", type=int, default=5000, help="events of the backlog before a catch-up kill")
    parser.add_argument("--envelope", type=int, default=10, help="events per message (big chunks: 1)")
    parser.add_argument("--pace-s", type=float, default=0.5, help="wall seconds between chunks")
    parser.add_argument("--duplicates", type=int, default=50, help="events re-sent per `duplicates` fault")
    parser.add_argument("--recovery-timeout-s", type=float, default=90.0,
                        help="give up waiting for a recovery after this long (reported as unfinished; later "
                        f"waits are then {DEGRADED_WAIT_S:.0f} s)")
    parser.add_argument("--settle-timeout-s", type=float, default=180.0,
                        help="how long to wait for the last step at the end")
    parser.add_argument("--bootstrap", default=None,
                        help="use this broker instead of starting one (then no broker restarts)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs, state) at the end")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(func=run)


def report(run: ChaosRun, comparison: chaos.Comparison, dlq: list[dict], seconds: float) -> dict:
    """The JSON object `trail chaos --json` prints."""
    fault_times = [run.events[f["at_event"] - 1]["ts"] for f in run.fault_log]
    kinds: dict[str, int] = {}
    for entry in run.fault_log:
        kinds[entry["kind"]] = kinds.get(entry["kind"], 0) + 1
    recovered = [r.seconds for r in run.recoveries if r.kind in RECOVERY_KINDS and r.seconds is not None]
    rebalanced = [r.seconds for r in run.recoveries if r.kind not in RECOVERY_KINDS and r.seconds is not None]
    mismatches = [{**m.as_dict(), "step": utc_date(m.step),
                   "suspect_faults": [i + 1 for i in chaos.suspects(m, fault_times, N_BUCKETS, SLOTS_PER_BUCKET)]}
                  for m in comparison.mismatches]
    return {
        "command": "chaos", "seed": run.args.seed, "events": len(run.events), "seconds": round(seconds, 1),
        "faults": {"total": len(run.fault_log), "by_kind": dict(sorted(kinds.items()))},
        "lost": comparison.lost, "double": comparison.double, "missing_steps": len(comparison.missing_steps),
        "missing": [utc_date(b) for b in comparison.missing_steps],
        "steps": {"expected": comparison.steps_expected,
                  "emitted": comparison.steps_emitted, "unexpected": [utc_date(b) for b in comparison.extra_steps],
                  "mismatched": len({m.step for m in comparison.mismatches})},
        "records": comparison.records,
        "duplicate_records": {"before_dedupe": comparison.duplicates_before_dedupe,
                              "after_dedupe": comparison.duplicates_after_dedupe,
                              "conflicting_copies": comparison.conflicting_copies},
        "dlq": {"records": len(dlq), "unique": len({(r.get("partition"), r.get("offset"), r.get("index"))
                                                    for r in dlq}),
                "planted": sum(run.planted_malformed.values()), "planted_by_kind": run.planted_malformed},
        "duplicates_planted": run.planted_duplicates,
        "recovery_s": chaos.percentiles(recovered), "rebalance_s": chaos.percentiles(rebalanced),
        "unfinished_recoveries": [{"fault": r.fault, "kind": r.kind, "worker": r.worker} for r in run.recoveries
                                  if r.seconds is None and (r.timed_out or not r.interrupted)],
        "worker_exits": run.exits,
        "mismatches": mismatches[:30], "mismatches_total": len(mismatches),
        "fault_log": run.fault_log,
        "ok": comparison.exact,
    }


def summary_lines(result: dict) -> list[str]:
    faults = ", ".join(f"{k} {v}" for k, v in result["faults"]["by_kind"].items())
    rec, dlq, dup = result["recovery_s"], result["dlq"], result["duplicate_records"]
    return [
        f"{'EXACT' if result['ok'] else 'NOT EXACT'}: lost {result['lost']}, double {result['double']}, "
        f"missing steps {result['missing_steps']} ({result['steps']['emitted']} steps emitted)",
        f"faults {result['faults']['total']}: {faults}",
        f"recovery p50 {rec['p50']} s, max {rec['max']} s over {rec['n']}; unfinished recoveries "
        f"{len(result['unfinished_recoveries'])}; worker exits {len(result['worker_exits'])}",
        f"duplicate records {dup['before_dedupe']} before / {dup['after_dedupe']} after de-duplication by record_id",
        f"DLQ {dlq['records']} records for {dlq['planted']} planted bad messages; "
        f"{result['duplicates_planted']} repeated event ids planted",
        f"{result['events']:,} events, seed {result['seed']}, {result['seconds']} s",
    ]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    if not 1 <= args.workers <= PARTITIONS:
        raise ValueError(f"--workers must be 1-{PARTITIONS}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the cleanup: stop workers and broker
    began = time.monotonic()
    console = Console(stderr=True)
    events = chaos.make_events(args.events, args.items, args.days, args.seed)
    kinds = [k for k in args.kinds.split(",") if k and not (k == "broker_restart" and args.bootstrap)]
    faults = chaos.plan_faults(args.faults, args.events, args.seed, chunk=args.chunk, big_chunk=args.big_chunk,
                               kinds=kinds, initial_workers=args.workers, max_workers=PARTITIONS)
    chunks = chaos.plan_chunks(args.events, faults, args.chunk, args.big_chunk)
    run_dir = Path(tempfile.mkdtemp(prefix="trail-chaos-"))
    broker = Broker(run_dir, args.bootstrap)
    app_id = f"chaos-{args.seed}-{uuid.uuid4().hex[:8]}"
    chaos_run = ChaosRun(args, run_dir, console, events, broker, WorkerPool([], run_dir / "workers"),
                         random.Random(args.seed), app_id)
    try:
        chaos_run.start()
        chaos_run.replay(chunks, chaos.faults_by_chunk(chunks, faults))
        boundaries = chaos.expected_boundaries(events)
        chaos_run.settle(boundaries[-1])
        records = chaos_run.read("trending", idle_exit_s=6.0)
        dlq = chaos_run.read("dlq", idle_exit_s=3.0)
    except BaseException:
        console.log(f"run directory kept: {run_dir}")
        raise
    finally:
        chaos_run.pool.stop_all()
        broker.stop()
    truth = chaos.recount(chaos_run.sent, boundaries, N_BUCKETS, SLOTS_PER_BUCKET)
    comparison = chaos.compare(records, truth, args.items)
    result = report(chaos_run, comparison, dlq, time.monotonic() - began)
    ok = comparison.exact
    if args.keep or not ok:
        console.log(f"run directory kept: {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        print("\n".join(summary_lines(result)))
    return 0 if ok else 1
