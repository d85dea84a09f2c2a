"""The I/O side of `trail chaos`: a seeded click log replayed through real workers and a real broker while
faults happen, and what they emitted read back.

Owns the durable embedded broker (s3 storage in a temporary directory) and its restarts, the worker pool
(start, SIGKILL, SIGTERM, restart of workers that exited), producing the log in chunks with the faults of
the schedule between them, measuring recovery from the workers' status files, and reading the trending and
DLQ topics back. The schedule, the recount and the comparison are pure and live in `streams.chaos`; the
command and its report in `streams.cli.chaos`.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from streams import chaos

PARTITIONS = 4
SLOTS_PER_BUCKET, N_BUCKETS = 7, 4
WINDOW_ARGS = ["--slot-s", "86400", "--bucket-s", str(SLOTS_PER_BUCKET * 86400), "--n-buckets", str(N_BUCKETS),
               "--allowed-lateness-s", "86400"]
DEGRADED_WAIT_S = 15.0
RECOVERY_KINDS = ("kill", "kill_catchup", "broker_restart", "restart_after_exit")


def utc_date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


class Broker:
    """The durable embedded broker of the run (restartable on the same port and data dir), or an external one."""

    def __init__(self, run_dir: Path, bootstrap: str | None) -> None:
        self.run_dir = run_dir
        self.external = bootstrap
        self.embedded = None

    @property
    def bootstrap(self) -> str:
        return self.external or self.embedded.bootstrap

    def start(self, port: int | None = None) -> None:
        from infra.broker import EmbeddedBroker

        if self.external:
            return
        self.embedded = EmbeddedBroker(port, storage="s3", data_dir=self.run_dir / "broker",
                                       log_dir=self.run_dir / "logs").start()

    def restart(self) -> None:
        """Stop tansu and its S3 emulator, then start them again on the same port and data dir."""
        port = self.embedded.port
        self.embedded.stop()
        self.start(port)

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.stop()


class WorkerPool:
    """The workers that should be running: ids w1, w2, ... each with its own state dir under the run dir."""

    def __init__(self, worker_args: list[str], data_dir: Path) -> None:
        self.worker_args = worker_args
        self.data_dir = data_dir
        self.workers: dict = {}
        self.started = 0

    def add(self) -> str:
        self.started += 1
        worker_id = f"w{self.started}"
        self.start(worker_id)
        return worker_id

    def start(self, worker_id: str) -> None:
        from streams.worker_process import WorkerProcess

        self.workers[worker_id] = WorkerProcess(self.worker_args, self.data_dir, worker_id).start()

    def kill_and_restart(self, worker_id: str) -> None:
        """SIGKILL (no flush, no commit), then start it again on the same id and state dir."""
        self.workers[worker_id].kill()
        self.start(worker_id)

    def remove(self, worker_id: str) -> None:
        """SIGTERM: a clean leave (its partitions move to the others)."""
        self.workers.pop(worker_id).stop()

    def exited(self) -> dict[str, int]:
        """Workers of the pool whose process has ended, with their exit codes."""
        return {wid: w.process.returncode for wid, w in self.workers.items() if not w.alive()}

    def statuses(self) -> dict[str, dict]:
        return {wid: w.status() for wid, w in self.workers.items()}

    def stop_all(self) -> None:
        for worker in self.workers.values():
            worker.stop()


@dataclass
class Recovery:
    """From a fault to the group (and, if set, one worker) owning every partition, out of recovery and
    counting again (or input done)."""

    fault: int                       # the fault's number (1-based); for a restart after an exit, the last fault
    kind: str
    started: float                   # monotonic
    since_wall: float                # counting must be newer than this wall time
    worker: str | None = None
    sent_before: int = 0             # events produced when the fault hit
    seconds: float | None = None
    interrupted: bool = False
    timed_out: bool = False


def worker_recovered(status: dict, since_wall: float, nothing_to_count: bool) -> bool:
    """A worker has joined its group since it started, is not recovering its tables, and, if it owns
    partitions, has counted since `since_wall` (unless there was nothing new to count). A worker may own
    none: faust gave one of two workers all four partitions."""
    counting = status.get("last_counted_at", 0.0) > since_wall or nothing_to_count
    joined = status.get("assignments", 0) > 0
    return joined and not status.get("recovering", True) and (counting or not status.get("assigned"))


def group_recovered(statuses: dict[str, dict], since_wall: float, nothing_to_count: bool) -> bool:
    """Every partition owned, no worker recovering, and some worker counted since `since_wall` (unless there
    was nothing new to count)."""
    owned = sorted(p for s in statuses.values() for p in s.get("assigned", []))
    recovering = any(s.get("recovering", True) for s in statuses.values())
    counting = nothing_to_count or any(s.get("last_counted_at", 0.0) > since_wall for s in statuses.values())
    return owned == list(range(PARTITIONS)) and not recovering and counting


@dataclass
class ChaosRun:
    args: argparse.Namespace
    run_dir: Path
    console: object
    events: list[dict]
    broker: Broker
    pool: WorkerPool
    rng: random.Random
    app_id: str
    began: float = field(default_factory=time.monotonic)
    sent: list[dict] = field(default_factory=list)      # every event produced, duplicates included
    fault_log: list[dict] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    exits: list[dict] = field(default_factory=list)
    planted_malformed: dict[str, int] = field(default_factory=dict)
    planted_duplicates: int = 0
    input_done: bool = False
    degraded: bool = False                              # a recovery never finished: wait less from then on

    @property
    def topics(self) -> dict[str, str]:
        return app_topics(self.app_id)

    def say(self, message: str) -> None:
        self.console.log(f"[{time.monotonic() - self.began:6.1f}s] {message}")

    # -- producing -------------------------------------------------------------------------------------------
    def produce(self, events: list[dict], envelope: int) -> None:
        from infra.kafka_config import KafkaSettings
        from streams.producer import ClickProducer

        with ClickProducer(KafkaSettings(bootstrap=self.broker.bootstrap), self.topics["clicks"], PARTITIONS,
                           envelope=envelope) as producer:
            producer.send_many(events)
        self.sent += events

    def produce_raw(self, values: list[bytes]) -> None:
        from infra.kafka_config import KafkaSettings
        from streams.producer import ClickProducer

        with ClickProducer(KafkaSettings(bootstrap=self.broker.bootstrap), self.topics["clicks"], PARTITIONS,
                           envelope=1) as producer:
            for value in values:
                producer.send_raw(value)

    # -- faults ----------------------------------------------------------------------------------------------
    def fire(self, fault: chaos.Fault, produced: int) -> None:
        """Apply one fault of the schedule and start measuring what it needs to recover from."""
        number = len(self.fault_log) + 1
        detail = getattr(self, f"fault_{fault.kind}")(number, produced)
        entry = {"n": number, "kind": fault.kind, "at_event": produced,
                 "day": utc_date(self.events[produced - 1]["ts"]), "t_s": round(time.monotonic() - self.began, 1),
                 "detail": detail}
        self.fault_log.append(entry)
        self.say(f"fault {number}/{self.args.faults} [bold]{fault.kind}[/] at event {produced:,}: {detail}")

    def track(self, number: int, kind: str, worker: str | None = None, since_wall: float | None = None) -> None:
        for pending in self.recoveries:   # a new fault on a worker still recovering cuts that measure short
            if pending.seconds is None and not pending.timed_out and worker is not None and pending.worker == worker:
                pending.interrupted = True
        self.recoveries.append(Recovery(number, kind, time.monotonic(), since_wall or time.time(), worker,
                                        len(self.sent)))

    def fault_kill(self, number: int, produced: int) -> str:
        victim = self.rng.choice(sorted(self.pool.workers))
        status = self.pool.workers[victim].status()
        self.pool.kill_and_restart(victim)
        self.track(number, "kill", victim)
        return f"SIGKILL {victim} (assigned {status.get('assigned')}, counted {status.get('counted', 0):,}), restarted"

    def fault_kill_catchup(self, number: int, produced: int) -> str:
        statuses = self.pool.statuses()
        most = max(len(s.get("assigned", [])) for s in statuses.values())
        victim = self.rng.choice(sorted(w for w, s in statuses.items() if len(s.get("assigned", [])) == most))
        # the one owning most partitions has the most backlog to catch up on
        self.pool.kill_and_restart(victim)
        self.track(number, "kill_catchup", victim)
        return (f"SIGKILL {victim} right after a {self.args.big_chunk:,}-event backlog in single-event messages "
                f"(assigned {statuses[victim].get('assigned')}), restarted")

    def fault_add_worker(self, number: int, produced: int) -> str:
        worker = self.pool.add()
        self.track(number, "add_worker", worker)
        return f"started {worker} ({len(self.pool.workers)} workers)"

    def fault_remove_worker(self, number: int, produced: int) -> str:
        victim = self.rng.choice(sorted(self.pool.workers))
        self.pool.remove(victim)
        self.track(number, "remove_worker")
        return f"SIGTERM {victim} ({len(self.pool.workers)} workers left)"

    def fault_broker_restart(self, number: int, produced: int) -> str:
        started = time.monotonic()
        self.broker.restart()
        down_s = time.monotonic() - started
        self.track(number, "broker_restart", since_wall=time.time())
        self.recoveries[-1].started = started
        return f"broker stopped and started on {self.broker.bootstrap} (same data dir) in {down_s:.1f} s"

    def fault_duplicates(self, number: int, produced: int) -> str:
        picks = chaos.pick_duplicates(produced, self.args.duplicates, self.rng)
        self.produce([self.events[i] for i in picks], self.args.envelope)
        self.planted_duplicates += len(picks)
        return f"re-sent {len(picks)} events from e{picks[0]}..e{picks[-1]}" if picks else "nothing to repeat"

    def fault_malformed(self, number: int, produced: int) -> str:
        self.produce_raw(list(chaos.MALFORMED.values()))
        for kind in chaos.MALFORMED:
            self.planted_malformed[kind] = self.planted_malformed.get(kind, 0) + 1
        return f"planted {len(chaos.MALFORMED)} malformed messages ({', '.join(chaos.MALFORMED)})"

    # -- watching --------------------------------------------------------------------------------------------
    def supervise(self) -> None:
        """Restart every pool worker that exited (a supervisor's job), and measure its recovery."""
        for worker, code in self.pool.exited().items():
            tail = self.pool.workers[worker].log_tail(400).strip().splitlines()
            self.exits.append({"worker": worker, "code": code, "after_fault": len(self.fault_log),
                               "t_s": round(time.monotonic() - self.began, 1), "log": tail[-1][-200:] if tail else ""})
            self.say(f"[yellow]{worker} exited with code {code}[/]; restarting it")
            self.pool.start(worker)
            self.track(len(self.fault_log), "restart_after_exit", worker)

    def update_recoveries(self) -> None:
        statuses = self.pool.statuses()
        now = time.monotonic()
        for pending in self.recoveries:
            if pending.seconds is not None or pending.interrupted or pending.timed_out:
                continue
            if pending.worker is not None and pending.worker not in self.pool.workers:
                pending.interrupted = True   # removed since
                continue
            if pending.worker is not None and pending.worker not in statuses:
                continue   # started, no status file yet
            # counting since the fault proves the group works again, but only input sent since can be counted:
            # before the next fault the producer waits for this, so back to back faults send nothing in between
            nothing_new = self.input_done or len(self.sent) == pending.sent_before
            done = group_recovered(statuses, pending.since_wall, nothing_new) and (
                pending.worker is None or worker_recovered(statuses[pending.worker], pending.since_wall,
                                                           nothing_new))
            if done:
                pending.seconds = now - pending.started

    def pending(self) -> list[Recovery]:
        return [r for r in self.recoveries if r.seconds is None and not r.interrupted and not r.timed_out]

    def poll(self, seconds: float) -> None:
        """Supervise and measure recoveries for `seconds` (the producer's pacing)."""
        deadline = time.monotonic() + seconds
        while True:
            self.supervise()
            self.update_recoveries()
            if time.monotonic() >= deadline:
                return
            time.sleep(0.2)

    def wait_until(self, condition, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                return False
            self.poll(0.5)
        return True

    # -- the run ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the broker and the first workers; return once they own every partition."""
        self.broker.start()
        self.pool.worker_args = worker_args(self.broker.bootstrap, self.app_id, self.args.items)
        self.say(f"broker {self.broker.bootstrap} ({'external' if self.broker.external else 's3 storage'}), "
                 f"app {self.app_id}, run dir {self.run_dir}")
        for _ in range(self.args.workers):
            self.pool.add()
        if not self.wait_until(lambda: group_recovered(self.pool.statuses(), 0.0, True), 120):
            raise RuntimeError("the workers never owned every partition:\n" +
                               "\n".join(w.log_tail(1500) for w in self.pool.workers.values()))
        self.say(f"{len(self.pool.workers)} workers own the {PARTITIONS} partitions")

    def replay(self, chunks: list[chaos.Chunk], due: dict[int, list[chaos.Fault]]) -> None:
        """Produce the chunks, paced; before a chunk a fault follows (or a big one), wait for the recoveries
        still running, so each fault hits a recovered group and is measured on its own."""
        for index, chunk in enumerate(chunks):
            if chunk.big or index in due:
                self.wait_recoveries()
            self.produce(self.events[chunk.start:chunk.end], 1 if chunk.big else self.args.envelope)
            for fault in due.get(index, []):
                self.fire(fault, chunk.end)
            if index % 10 == 0:
                self.say(f"produced {chunk.end:,} of {len(self.events):,} events")
            self.poll(0 if chunk.big else self.args.pace_s)
        self.input_done = True
        self.say(f"all {len(self.events):,} events produced")

    def wait_recoveries(self) -> None:
        """Wait for the recoveries still running; those not done in time are given up on (reported). Once one
        never finished, the group may stay stuck: later waits are short so every fault is still exercised."""
        timeout_s = DEGRADED_WAIT_S if self.degraded else self.args.recovery_timeout_s
        if self.wait_until(lambda: not self.pending(), timeout_s):
            return
        self.degraded = True
        for pending in self.pending():
            pending.timed_out = True
            where = f"{pending.worker}: " + self.pool.workers[pending.worker].log_tail(300).strip().splitlines()[-1] \
                if pending.worker in self.pool.workers else "the group"
            self.say(f"[red]no recovery from fault {pending.fault} ({pending.kind}) in {timeout_s:.0f} s[/]; {where}")

    def settle(self, last_boundary: int) -> None:
        """Wait for every recovery, then for the last step (the idle flush scores it)."""
        self.wait_recoveries()
        self.say(f"waiting for the step ending {utc_date(last_boundary)}")
        if not self.wait_until(lambda: self.step_emitted(last_boundary), self.args.settle_timeout_s):
            self.say("[red]the last step never came[/]")

    def step_emitted(self, boundary: int) -> bool:
        return any(r["window"]["end"] == boundary for r in self.read("trending", idle_exit_s=2.0))

    def read(self, key: str, idle_exit_s: float) -> list[dict]:
        return read_topic(self.broker.bootstrap, self.topics[key], idle_exit_s)


def read_topic(bootstrap: str, topic: str, idle_exit_s: float) -> list[dict]:
    """Every record of every partition of `topic`, from offset 0 (not OFFSET_BEGINNING: tansu with s3 storage
    answers the earliest-offset lookup with a later offset, and then nothing is fetched), until idle."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "trail-chaos", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records, last_at = [], time.monotonic()
        while time.monotonic() - last_at < idle_exit_s:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                records.append(orjson.loads(message.value()))
                last_at = time.monotonic()
        return records
    finally:
        consumer.close()


def app_topics(app_id: str) -> dict[str, str]:
    return {"clicks": f"{app_id}-clicks", "items": f"{app_id}-items", "dlq": f"{app_id}-dlq",
            "trending": f"{app_id}-trending"}


def worker_args(bootstrap: str, app_id: str, top_k: int) -> list[str]:
    topics = app_topics(app_id)
    return ["--bootstrap", bootstrap, "--app-id", app_id, "--partitions", str(PARTITIONS),
            "--clicks-topic", topics["clicks"], "--items-topic", topics["items"], "--dlq-topic", topics["dlq"],
            "--trending-topic", topics["trending"], "--top-k", str(top_k), "--idle-flush-s", "3",
            "--recovery-give-up-s", "60", *WINDOW_ARGS]
