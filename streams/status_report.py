"""What a worker tells its operator: the status file (from a thread of its own), the recovery watchdog and
the periodic progress log line.

`StatusReporting` is a part of `streams.app.Pipeline` (which holds the counters, runtime and recovery
watch); split out so the app module reads as the stream. The file is what `trail chaos`, the benches and
the tests poll; Prometheus reads the same counters (`streams.metrics`).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import orjson

from infra.files import write_atomic_private
from streams.recovery_watch import RecoveryStalled

log = logging.getLogger("trail.worker")


class StatusReporting:
    """Status-file and progress-log bodies of `Pipeline`."""

    def start_status_thread(self, interval_s: float = 1.0) -> threading.Thread:
        """Write the status file every `interval_s` from a thread of its own: faust runs no timer while it
        recovers tables, and that is when an operator most needs to see what the worker does."""
        def loop() -> None:
            while True:
                time.sleep(interval_s)
                self.watch_recovery()
                self.write_status()

        thread = threading.Thread(target=loop, name="trail-status", daemon=True)
        thread.start()
        return thread

    def watch_recovery(self) -> None:
        """Recovery state for the status file; stops the worker (exit 70) when it made no progress for good."""
        try:
            self.recovery_state = self.recovery_watch.check(self.app.tables.recovery)
        except RecoveryStalled as exc:
            log.critical("trail: %s; stopping the worker so that a restart recovers afresh", exc)
            self.write_status(failed="recovery")
            logging.shutdown()
            os._exit(70)

    def log_progress(self) -> None:
        log.info("trail: %s", orjson.dumps(self.counters.as_dict()).decode())

    def write_status(self, failed: str | None = None) -> None:
        """The status file operators and benches read: counters, scorer, owned partitions (atomic replace)."""
        path = self.config.status_path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            assigned = sorted(tp.partition for tp in set(self.app.consumer.assignment())
                              if tp.topic == self.config.topics.clicks)
        except RuntimeError:   # the assignment changed while read from the status thread: next time
            return
        write_atomic_private(path, orjson.dumps({
            **self.counters.as_dict(), "scorer": self.runtime.scorer.name, "scorer_fallbacks": self.runtime.fallbacks,
            **self.runtime.text_vector_counters(),
            "assigned": assigned, **self.recovery_state, "step_trace": self.step_trace.as_dict(),
            "written_at": time.time(),
            **({"failed": failed} if failed else {})}), mode=0o644)
