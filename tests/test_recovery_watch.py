"""RecoveryWatch: recovery progress reported, a stall logged once, and given up on after the limit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from streams.recovery_watch import RecoveryStalled, RecoveryWatch


@dataclass
class RecoveryState:
    """The two things the watch reads from faust's Recovery service."""

    in_recovery: bool = True
    remaining: dict = field(default_factory=lambda: {"changelog-0": 5})

    def active_remaining_total(self) -> int:
        return sum(self.remaining.values())

    def active_remaining(self) -> dict:
        return dict(self.remaining)


def test_progress_resets_the_quiet_time_and_a_stall_is_logged_once(caplog):
    watch, recovery = RecoveryWatch(stall_after_s=10, give_up_after_s=0), RecoveryState()
    assert watch.check(recovery, now_s=0)["recovery_quiet_s"] == 0
    recovery.remaining["changelog-0"] = 3
    assert watch.check(recovery, now_s=8)["recovery_quiet_s"] == 0
    with caplog.at_level(logging.ERROR, logger="trail.worker"):
        watch.check(recovery, now_s=19)
        state = watch.check(recovery, now_s=30)
    assert state == {"recovering": True, "recovery_remaining": 3, "recovery_quiet_s": 22.0}
    assert sum("no progress" in r.message for r in caplog.records) == 1


def test_a_worker_gives_up_after_the_limit_without_progress():
    watch, recovery = RecoveryWatch(stall_after_s=10, give_up_after_s=60), RecoveryState()
    watch.check(recovery, now_s=0)
    watch.check(recovery, now_s=59)
    with pytest.raises(RecoveryStalled):
        watch.check(recovery, now_s=60)


def test_no_recovery_is_reported_as_such():
    assert RecoveryWatch().check(RecoveryState(in_recovery=False), now_s=0) == {"recovering": False}
