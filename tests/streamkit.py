"""Helpers for the end-to-end stream tests: deterministic event logs, an independent recount, and a
replay harness (worker processes + producer + trend reader) over the session's embedded broker."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from infra.kafka_config import KafkaSettings
from streams.chaos import BASE_TS_MS, DAY_MS
from streams.chaos import make_events as chaos_events
from streams.producer import ClickProducer
from streams.trend_reader import read_records
from streams.worker_process import WorkerProcess

WINDOW_ARGS = ["--slot-s", "86400", "--bucket-s", "604800", "--n-buckets", "4", "--allowed-lateness-s", "86400"]


def make_events(n_events: int, n_items: int, days: int, seed: int = 7) -> list[dict]:
    """Time-ordered click events with skewed, drifting item popularity (so trends change): the chaos log."""
    return chaos_events(n_events, n_items, days, seed)


def recount(events: list[dict], boundary_slot: int, n_buckets: int, slots_per_bucket: int = 7) -> dict:
    """Straightforward per-item bucket counts at a boundary (independent of models.windows)."""
    counts: dict[str, list[int]] = {}
    start = boundary_slot - n_buckets * slots_per_bucket
    seen = set()
    for event in events:
        if event.get("event_id") in seen:
            continue
        seen.add(event.get("event_id"))
        slot = event["ts"] // DAY_MS
        if start <= slot < boundary_slot:
            counts.setdefault(event["item_id"], [0] * n_buckets)[(slot - start) // slots_per_bucket] += 1
    return counts


@dataclass
class Replay:
    """One isolated pipeline (own app id and topics) on the shared broker."""

    bootstrap: str
    name: str
    data_dir: Path
    partitions: int = 4
    top_k: int = 10
    extra_args: list[str] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def topics(self) -> dict[str, str]:
        return {"clicks": f"{self.name}-clicks", "items": f"{self.name}-items", "dlq": f"{self.name}-dlq",
                "trending": f"{self.name}-trending"}

    def worker_args(self) -> list[str]:
        t = self.topics
        return ["--bootstrap", self.bootstrap, "--app-id", self.name, "--partitions", str(self.partitions),
                "--clicks-topic", t["clicks"], "--items-topic", t["items"], "--dlq-topic", t["dlq"],
                "--trending-topic", t["trending"], "--top-k", str(self.top_k), "--idle-flush-s", "3",
                *WINDOW_ARGS, *self.extra_args]

    def start_worker(self, worker_id: str = "w1") -> WorkerProcess:
        worker = WorkerProcess(self.worker_args(), self.data_dir, worker_id).start()
        self.workers.append(worker)
        return worker

    def wait_assigned(self, timeout_s: float = 90) -> None:
        """Wait until the running workers together own every clicks partition."""
        import time
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            owned = [p for w in self.workers if w.alive() for p in w.status().get("assigned", [])]
            if sorted(owned) == list(range(self.partitions)):
                return
            time.sleep(0.3)
        raise TimeoutError("partitions never fully assigned: " + " | ".join(w.log_tail(800) for w in self.workers))

    def produce(self, events: list[dict], envelope: int = 50) -> None:
        settings = KafkaSettings(bootstrap=self.bootstrap)
        with ClickProducer(settings, self.topics["clicks"], self.partitions, envelope=envelope) as producer:
            producer.send_many(events)

    def produce_raw(self, values: list[bytes]) -> None:
        settings = KafkaSettings(bootstrap=self.bootstrap)
        with ClickProducer(settings, self.topics["clicks"], self.partitions, envelope=1) as producer:
            for value in values:
                producer.send_raw(value)

    def counted(self) -> int:
        return sum(w.status().get("counted", 0) for w in self.workers if w.alive())

    def wait_counted(self, n_events: int, timeout_s: float = 120) -> None:
        import time
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.counted() >= n_events:
                return
            time.sleep(0.3)
        raise TimeoutError(f"counted {self.counted()} of {n_events}: " + self.workers[0].log_tail(1500))

    def records(self, topic_key: str = "trending", idle_exit_s: float = 6.0) -> list[dict]:
        settings = KafkaSettings(bootstrap=self.bootstrap)
        return list(read_records(settings, self.topics[topic_key], True, idle_exit_s=idle_exit_s))

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def by_step(records: list[dict]) -> dict[int, list[dict]]:
    """Records grouped by window end, the last emission of each step (a restart may repeat one)."""
    steps: dict[int, dict[int, dict]] = {}
    for record in records:
        steps.setdefault(record["window"]["end"], {})[record["rank"]] = record
    return {end: [ranks[r] for r in sorted(ranks)] for end, ranks in sorted(steps.items())}


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "generated_at"} for r in records]


def total_events(events: list[dict]) -> int:
    return len({e.get("event_id") for e in events})


__all__ = ["BASE_TS_MS", "DAY_MS", "Counter", "Replay", "by_step", "comparable", "make_events", "recount",
           "total_events"]
