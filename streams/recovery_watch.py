"""Watching faust's table recovery from outside: is the worker recovering, is it making progress, and
when has it been stuck too long.

faust logs "No event received for active tp ... since recovery start" every few seconds and waits
forever; an operator (and a supervisor) needs one clear signal instead. `RecoveryWatch.check` is called
once a second: it reports the state for the status file, logs once when recovery made no progress for
`stall_after_s`, and says when `give_up_after_s` without progress has passed, so the worker can exit
non-zero and be restarted (a fresh consumer re-reads the changelog from the persisted offset).
Reads faust's recovery object only; no Kafka I/O here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger("trail.worker")


@dataclass
class RecoveryWatch:
    stall_after_s: float = 60.0
    give_up_after_s: float = 0.0       # 0: never give up, only report
    last_remaining: int | None = None
    progress_at: float = 0.0
    stalled_logged: bool = False

    def check(self, recovery, now_s: float | None = None) -> dict:
        """The recovery state for the status file; raises RecoveryStalled once past `give_up_after_s`."""
        now_s = time.monotonic() if now_s is None else now_s
        if not getattr(recovery, "in_recovery", False):
            self.last_remaining, self.stalled_logged = None, False
            return {"recovering": False}
        remaining = int(recovery.active_remaining_total())
        if self.last_remaining is None or remaining != self.last_remaining:
            self.last_remaining, self.progress_at = remaining, now_s
        quiet_s = now_s - self.progress_at
        state = {"recovering": True, "recovery_remaining": remaining, "recovery_quiet_s": round(quiet_s, 1)}
        if quiet_s >= self.stall_after_s and not self.stalled_logged:
            self.stalled_logged = True
            log.error("trail: table recovery has made no progress for %.0f s with %d changelog records to go: %s",
                      quiet_s, remaining, dict(recovery.active_remaining()))
        if self.give_up_after_s and quiet_s >= self.give_up_after_s:
            raise RecoveryStalled(f"table recovery made no progress for {quiet_s:.0f} s ({remaining} records to go)")
        return state


class RecoveryStalled(RuntimeError):
    """Recovery stopped making progress; the worker exits so that a restart starts it afresh."""
