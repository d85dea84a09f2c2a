"""What a worker's local state belongs to, checked before faust opens it.

A worker's RocksDB (DATA_DIR/WORKER_ID/v1) is a cache of its changelog topics on one cluster. It is
only valid against the same cluster, the same incarnation of those topics (a topic re-created, or a
memory broker restarted, gets a new topic id) and the same window geometry. `origin.json` beside it
records all three. At start (`reconcile`):
- same origin: keep the state;
- other cluster or other changelog incarnation: the state is moved aside (``v1.stale-<time>``) and the
  worker starts clean from the changelog, with one log line saying so (faust would otherwise die with
  "ConsistencyError: persisted offset ... higher than the last offset");
- other window geometry: refused (`OriginMismatch`): the changelog holds the old geometry too, so only
  another --app-id or the old settings make sense;
- the input topic re-created (new clicks topic id): kept, and the caller rewinds the consumer group on
  it, since the input offsets of the old incarnation mean nothing for the new one (the applied-offset
  bookkeeping is keyed by the clicks incarnation, `streams.state`).
No Kafka I/O here: the caller passes what the cluster says.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from infra.files import write_atomic_private

log = logging.getLogger("trail.worker")
ORIGIN_FILE = "origin.json"
STATE_DIR = "v1"     # faust's folder for app version 1 under the worker's data dir


class OriginMismatch(ValueError):
    """The local state was built for another window geometry; starting would misread it."""


@dataclass(frozen=True)
class StateOrigin:
    cluster_id: str
    clicks_topic_id: str
    changelog_topic_ids: dict[str, str] = field(default_factory=dict)
    geometry: dict[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)

    @classmethod
    def decode(cls, raw: bytes) -> StateOrigin:
        body = orjson.loads(raw)
        return cls(str(body["cluster_id"]), str(body["clicks_topic_id"]),
                   {str(k): str(v) for k, v in body["changelog_topic_ids"].items()},
                   {str(k): int(v) for k, v in body["geometry"].items()})


@dataclass(frozen=True)
class Reconciled:
    kept: bool                 # False: started clean
    input_recreated: bool      # the clicks topic is a new incarnation: rewind the group on it
    reason: str = ""


def reconcile(worker_dir: Path, current: StateOrigin) -> Reconciled:
    """Compare the recorded origin with `current`; move stale state aside; record `current`."""
    worker_dir.mkdir(parents=True, exist_ok=True)
    path, state_dir = worker_dir / ORIGIN_FILE, worker_dir / STATE_DIR
    stored = _read(path)
    result = Reconciled(kept=True, input_recreated=False)
    if stored is None:
        if state_dir.exists():
            result = _start_clean(state_dir, "it has no recorded origin (written by an older version)")
    elif stored.geometry != current.geometry:
        raise OriginMismatch(
            f"the state in {state_dir} was built with window {stored.geometry}, this worker has {current.geometry}; "
            "its changelog holds the old window too: start with the old window settings, or use another --app-id "
            "(and --data-dir) for the new one")
    elif stored.cluster_id != current.cluster_id or stored.changelog_topic_ids != current.changelog_topic_ids:
        what = "another cluster" if stored.cluster_id != current.cluster_id else "earlier changelog topics"
        result = _start_clean(state_dir, f"it belongs to {what} (the broker was restarted or the topics re-created)")
    elif stored.clicks_topic_id != current.clicks_topic_id:
        result = Reconciled(kept=True, input_recreated=True, reason="the input topic was re-created")
        log.warning("trail: the input topic is a new incarnation (topic id %s, was %s): counting it from offset 0",
                    current.clicks_topic_id, stored.clicks_topic_id)
    write_atomic_private(path, current.encode(), mode=0o644)
    return result


def _read(path: Path) -> StateOrigin | None:
    try:
        return StateOrigin.decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        log.warning("trail: %s is unreadable; treating the state beside it as of unknown origin", path)
        return None


def _start_clean(state_dir: Path, why: str) -> Reconciled:
    stale = state_dir.with_name(f"{state_dir.name}.stale-{time.strftime('%Y%m%dT%H%M%S')}")
    if state_dir.exists():
        state_dir.rename(stale)
    log.warning("trail: starting clean: the local state in %s was moved to %s because %s; it is rebuilt from "
                "the changelog", state_dir, stale.name, why)
    return Reconciled(kept=False, input_recreated=False, reason=why)
