"""The pure parts of `trail chaos` (no Kafka I/O, no processes): the seeded synthetic click log, the fault
schedule and how the log is cut into chunks around it, the planted bad input, the straight recount of the
de-duplicated log, the comparison of emitted trend records with that recount, and the summary statistics.

`streams.chaos_run` runs the schedule against real workers and a real broker and feeds what it read back
into `compare` (the command is `streams.cli.chaos`); everything here is deterministic given its arguments
(tested in tests/test_chaos.py).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from streams.trend_reader import first_sightings

DAY_MS = 86_400_000
BASE_TS_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z, a slot boundary

# every kind a schedule can hold; the first of each is guaranteed when there are enough faults
FAULT_KINDS = ("kill", "kill_catchup", "add_worker", "remove_worker", "broker_restart", "duplicates", "malformed")
FAULT_WEIGHTS = {"kill": 3.0, "kill_catchup": 2.0, "add_worker": 1.0, "remove_worker": 1.0,
                 "broker_restart": 1.0, "duplicates": 1.5, "malformed": 1.0}

# planted bad messages, one of each per `malformed` fault; each must end in the DLQ exactly once
MALFORMED: dict[str, bytes] = {
    "not_json": b"{not json",
    "missing_item_id": orjson.dumps({"ts": BASE_TS_MS, "event_id": "bad-1"}),
    "ts_not_integer": orjson.dumps({"item_id": "item-0", "ts": "yesterday"}),
    "item_id_too_long": orjson.dumps({"item_id": "x" * 300, "ts": BASE_TS_MS}),
    "ts_too_old": orjson.dumps({"item_id": "item-0", "ts": 946_684_800_000 - DAY_MS}),
}


def make_events(n_events: int, n_items: int, days: int, seed: int) -> list[dict]:
    """Time-ordered click events with unique event ids and skewed, drifting popularity (item k peaks on
    day 3k), spread evenly over `days` daily slots from 2024-01-01."""
    rng = random.Random(seed)
    events = []
    for i in range(n_events):
        ts = BASE_TS_MS + (i * days * DAY_MS) // n_events
        day = (ts - BASE_TS_MS) // DAY_MS
        weights = [1.0 / (1 + abs(day - 3 * k)) + 0.05 for k in range(n_items)]
        item = rng.choices(range(n_items), weights)[0]
        events.append({"item_id": f"item-{item}", "ts": ts, "user_id": f"u{rng.randrange(50)}",
                       "event_id": f"e{i}"})
    return events


@dataclass(frozen=True)
class Fault:
    """One fault, fired once the first `at_event` events of the log have been produced."""

    kind: str
    at_event: int


@dataclass(frozen=True)
class Chunk:
    """Events [start, end) of the log, produced together; a big one is produced unpaced just before a
    `kill_catchup` so the victim is killed with a large backlog."""

    start: int
    end: int
    big: bool = False


def fault_kinds(n_faults: int, rng: random.Random, allowed: Sequence[str] = FAULT_KINDS) -> list[str]:
    """`n_faults` kinds in random order: one of each allowed kind first (if room), the rest by weight."""
    unknown = set(allowed) - set(FAULT_KINDS)
    if unknown or not allowed:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(FAULT_KINDS)}")
    kinds = [k for k in FAULT_KINDS if k in allowed]
    chosen = kinds[:n_faults] if n_faults < len(kinds) else list(kinds)
    weights = [FAULT_WEIGHTS[k] for k in kinds]
    chosen += rng.choices(kinds, weights, k=n_faults - len(chosen))
    rng.shuffle(chosen)
    return chosen


def keep_worker_count_valid(kinds: Sequence[str], initial: int, max_workers: int) -> list[str]:
    """Swap removes that would leave no worker for adds, and adds beyond `max_workers` for removes (for a
    kill when the other kind is not in the schedule)."""
    count, valid = initial, []
    for kind in kinds:
        if kind == "remove_worker" and count <= 1:
            kind = "add_worker" if "add_worker" in kinds else "kill"
        elif kind == "add_worker" and count >= max_workers:
            kind = "remove_worker" if "remove_worker" in kinds else "kill"
        count += {"add_worker": 1, "remove_worker": -1}.get(kind, 0)
        valid.append(kind)
    return valid


def plan_faults(n_faults: int, n_events: int, seed: int, *, chunk: int = 500, big_chunk: int = 5000,
                kinds: Sequence[str] = FAULT_KINDS, initial_workers: int = 2, max_workers: int = 4) -> list[Fault]:
    """A seeded schedule of `n_faults` faults at increasing positions in the log.

    The first fault comes after 5 % of the log, the last before 95 %; consecutive faults are at least two
    chunks apart, and a `kill_catchup` at least `big_chunk` + one chunk after the previous fault (room for
    its big chunk), so input always flows between a fault and the next one. Raises ValueError when the log
    is too short for that many faults.
    """
    rng = random.Random(seed)
    kinds = keep_worker_count_valid(fault_kinds(n_faults, rng, kinds), initial_workers, max_workers)
    lead_in, tail = n_events // 20, n_events // 20
    gaps = [big_chunk + chunk if kind == "kill_catchup" else 2 * chunk for kind in kinds]
    slack = n_events - lead_in - tail - sum(gaps)
    if slack < 0:
        raise ValueError(f"{n_events} events are too few for {n_faults} faults "
                         f"(need about {n_events - slack}; raise --events or lower --faults)")
    shares = [rng.random() for _ in kinds]
    total = sum(shares) or 1.0
    faults, position = [], lead_in
    for kind, gap, share in zip(kinds, gaps, shares, strict=True):
        position += gap + int(slack * share / total)
        faults.append(Fault(kind, min(position, n_events - tail)))
    return faults


def plan_chunks(n_events: int, faults: Sequence[Fault], chunk: int = 500, big_chunk: int = 5000) -> list[Chunk]:
    """Contiguous chunks covering the log: at most `chunk` events each, ending at every fault position;
    the chunk just before a `kill_catchup` is one big chunk of up to `big_chunk` events."""
    chunks: list[Chunk] = []
    start = 0
    for fault in sorted(faults, key=lambda f: f.at_event):
        big_start = max(start, fault.at_event - big_chunk) if fault.kind == "kill_catchup" else fault.at_event
        chunks += even_chunks(start, big_start, chunk)
        if big_start < fault.at_event:
            chunks.append(Chunk(big_start, fault.at_event, big=True))
        start = max(start, fault.at_event)
    return chunks + even_chunks(start, n_events, chunk)


def even_chunks(start: int, end: int, chunk: int) -> list[Chunk]:
    return [Chunk(s, min(s + chunk, end)) for s in range(start, end, chunk)]


def faults_by_chunk(chunks: Sequence[Chunk], faults: Sequence[Fault]) -> dict[int, list[Fault]]:
    """Chunk index -> the faults fired right after that chunk was produced (its end is their position)."""
    index_of_end = {c.end: i for i, c in enumerate(chunks)}
    due: dict[int, list[Fault]] = defaultdict(list)
    for fault in faults:
        due[index_of_end.get(fault.at_event, 0)].append(fault)
    return dict(due)


def pick_duplicates(produced: int, n: int, rng: random.Random, recent: int = 3000) -> list[int]:
    """Indices of `n` already-produced events to send again, drawn from the most recent `recent`."""
    low = max(0, produced - recent)
    if produced <= low:
        return []
    return sorted(rng.sample(range(low, produced), min(n, produced - low)))


def expected_boundaries(events: Iterable[dict], slot_ms: int = DAY_MS) -> list[int]:
    """Every step boundary (ms) a complete run must emit: from the slot after the first event's to the slot
    of the newest event (the idle flush scores up to it)."""
    times = [e["ts"] for e in events]
    first, last = min(times) // slot_ms + 1, max(times) // slot_ms
    return [slot * slot_ms for slot in range(first, last + 1)]


def dedupe_events(events: Iterable[dict]) -> list[dict]:
    """The log as counted exactly: the first occurrence of each event id (events without one all count)."""
    seen, kept = set(), []
    for event in events:
        event_id = event.get("event_id")
        if event_id is not None:
            if event_id in seen:
                continue
            seen.add(event_id)
        kept.append(event)
    return kept


def recount(events: Iterable[dict], boundaries: Iterable[int], n_buckets: int, slots_per_bucket: int,
            slot_ms: int = DAY_MS) -> dict[int, dict[str, list[int]]]:
    """Per boundary (ms), per item, the counts of its `n_buckets` buckets (oldest first) ending there, from
    the de-duplicated log; items with no event in the window are left out (as the worker leaves them out)."""
    per_slot: dict[str, Counter] = defaultdict(Counter)
    for event in dedupe_events(events):
        per_slot[event["item_id"]][event["ts"] // slot_ms] += 1
    truth: dict[int, dict[str, list[int]]] = {}
    for boundary in boundaries:
        end_slot = boundary // slot_ms
        start = end_slot - n_buckets * slots_per_bucket
        step: dict[str, list[int]] = {}
        for item, slots in per_slot.items():
            counts = [0] * n_buckets
            for slot, n in slots.items():
                if start <= slot < end_slot:
                    counts[(slot - start) // slots_per_bucket] += n
            if any(counts):
                step[item] = counts
        truth[boundary] = step
    return truth


@dataclass
class Mismatch:
    """One emitted record (or one missing item) whose counts differ from the recount."""

    step: int
    item_id: str
    emitted: list[int] | None     # None: the item is absent from a step that has room for it
    truth: list[int]

    @property
    def diff(self) -> list[int]:
        emitted = self.emitted or [0] * len(self.truth)
        return [e - t for e, t in zip(emitted, self.truth, strict=True)]

    def as_dict(self) -> dict:
        return {"step": self.step, "item_id": self.item_id, "emitted": self.emitted, "truth": self.truth,
                "diff": self.diff}


@dataclass
class Comparison:
    """Emitted steps against the recount: the numbers `trail chaos` reports."""

    lost: int = 0
    double: int = 0
    missing_steps: list[int] = field(default_factory=list)
    extra_steps: list[int] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    records: int = 0
    duplicates_before_dedupe: int = 0
    duplicates_after_dedupe: int = 0
    conflicting_copies: int = 0      # a record_id seen again with another body (generated_at aside)
    steps_emitted: int = 0
    steps_expected: int = 0

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.double == 0 and not self.missing_steps


def record_body(record: dict) -> bytes:
    """A record's identity for comparing copies: everything but `generated_at`."""
    return orjson.dumps({k: v for k, v in record.items() if k != "generated_at"}, option=orjson.OPT_SORT_KEYS)


def distinct_records(records: Iterable[dict]) -> list[dict]:
    """Records with distinct bodies (an identical re-emission adds nothing to check)."""
    seen, kept = set(), []
    for record in records:
        body = record_body(record)
        if body not in seen:
            seen.add(body)
            kept.append(record)
    return kept


def count_duplicates(records: Sequence[dict]) -> tuple[int, int, int]:
    """(records repeating a step and rank, the same after de-duplication by record_id, record ids seen again
    with a different body)."""
    slots = {(r["window"]["end"], r["rank"]) for r in records}
    deduped = list(first_sightings(records))
    first_body: dict[str, bytes] = {}
    conflicting = 0
    for record in records:
        record_id = record.get("record_id")
        if record_id is not None and first_body.setdefault(record_id, record_body(record)) != record_body(record):
            conflicting += 1
    return len(records) - len(slots), len(deduped) - len(slots), conflicting


def compare(records: Sequence[dict], truth: dict[int, dict[str, list[int]]], top_k: int) -> Comparison:
    """Every distinct emitted record against the recount; lost/double are the sums over steps and items of
    the negative/positive differences. A step with fewer than `top_k` items must hold every item the recount
    has (an absent one counts as lost). `truth` keys are the boundaries that must all be present."""
    result = Comparison(records=len(records), steps_expected=len(truth))
    result.duplicates_before_dedupe, result.duplicates_after_dedupe, result.conflicting_copies = \
        count_duplicates(records)
    by_step: dict[int, list[dict]] = defaultdict(list)
    for record in distinct_records(records):
        by_step[record["window"]["end"]].append(record)
    result.steps_emitted = len(by_step)
    result.missing_steps = sorted(set(truth) - set(by_step))
    result.extra_steps = sorted(set(by_step) - set(truth))
    for step in sorted(set(by_step) & set(truth)):
        result.mismatches += step_mismatches(step, by_step[step], truth[step], top_k)
    for mismatch in result.mismatches:
        result.double += sum(d for d in mismatch.diff if d > 0)
        result.lost -= sum(d for d in mismatch.diff if d < 0)
    return result


def step_mismatches(step: int, records: Sequence[dict], truth: dict[str, list[int]], top_k: int) -> list[Mismatch]:
    """The records of one step whose counts differ from the recount, and items missing from a step with room."""
    found = []
    for record in records:
        expected = truth.get(record["item_id"], [0] * len(record["recent_counts"]))
        if record["recent_counts"] != expected:
            found.append(Mismatch(step, record["item_id"], record["recent_counts"], expected))
    present = {r["item_id"] for r in records}
    if len(present) < top_k:
        found += [Mismatch(step, item, None, counts) for item, counts in sorted(truth.items()) if item not in present]
    return found


def suspects(mismatch: Mismatch, fault_times: Sequence[int], n_buckets: int, slots_per_bucket: int,
             slot_ms: int = DAY_MS, slack_slots: int = 2) -> list[int]:
    """Indices of faults that happened while the producer was inside (or `slack_slots` after) a bucket of
    this mismatch that is off; `fault_times` is the event time (ms) the log had reached at each fault."""
    start = mismatch.step // slot_ms - n_buckets * slots_per_bucket
    ranges = [(start + b * slots_per_bucket, start + (b + 1) * slots_per_bucket + slack_slots)
              for b, d in enumerate(mismatch.diff) if d]
    return [i for i, t in enumerate(fault_times) if any(lo <= t // slot_ms < hi for lo, hi in ranges)]


def percentiles(values: Sequence[float]) -> dict:
    """n, p50 and max of `values` (seconds, rounded to 0.1), None when empty."""
    if not values:
        return {"n": 0, "p50": None, "max": None}
    ordered = sorted(values)
    return {"n": len(ordered), "p50": round(ordered[(len(ordered) - 1) // 2], 1), "max": round(ordered[-1], 1)}
