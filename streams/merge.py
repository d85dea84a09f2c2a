"""The merge step's messages and bookkeeping (pure; no Kafka I/O here).

- `CandidatesMessage`: one table partition's top-K at one boundary, on the internal `<app>-candidates`
  topic (schemas/candidates.v1.json), checked on the way in: anything else is rejected, never merged.
- `MergeProgress`: in the merge table under ``progress``: the last boundary emitted and, per partition,
  the last boundary it reported. A step is complete once every partition reported it (or past it).
- ``pending:<boundary>`` keys hold the candidates received so far for a boundary; deleted once emitted.
- `record_id`: the deterministic id of a trend record (same step, rank and model -> same id), so a
  step emitted twice (a crash between the records' acks and the progress commit) can be de-duplicated.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import orjson

from schemas import CANDIDATES_V1, ValidationError, validator
from streams.deltas import InvalidInternalMessage

PENDING_PREFIX = b"pending:"
_validate_candidates = validator(CANDIDATES_V1)


def pending_key(boundary: int) -> bytes:
    return PENDING_PREFIX + f"{boundary:020d}".encode()


@dataclass(frozen=True)
class CandidatesMessage:
    boundary: int
    partition: int
    candidates: list[dict]

    def encode(self) -> bytes:
        return orjson.dumps({"b": self.boundary, "p": self.partition, "candidates": self.candidates})

    @classmethod
    def decode(cls, value: bytes | None, n_partitions: int, top_k: int, n_buckets: int) -> CandidatesMessage:
        """A checked candidates message; InvalidInternalMessage for anything a worker would not write."""
        try:
            body = orjson.loads(value or b"")
            _validate_candidates(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInternalMessage(f"candidates message is not JSON: {exc}") from exc
        except ValidationError as exc:
            raise InvalidInternalMessage(f"schema candidates.v1: {exc.message}") from exc
        if body["p"] >= n_partitions:
            raise InvalidInternalMessage(f"candidates partition {body['p']} is not in [0, {n_partitions})")
        candidates = body["candidates"]
        if len(candidates) > top_k:
            raise InvalidInternalMessage(f"{len(candidates)} candidates, more than top-k {top_k}")
        for candidate in candidates:
            if len(candidate["counts"]) != n_buckets or not any(candidate["counts"]):
                raise InvalidInternalMessage(f"candidate {candidate['item_id'][:80]!r} has counts "
                                             f"{candidate['counts'][:20]} (want {n_buckets} buckets, not all 0)")
            if not math.isfinite(candidate["forecast"]) or candidate["last_event_slot"] >= body["b"]:
                raise InvalidInternalMessage(f"candidate {candidate['item_id'][:80]!r}: forecast or last event "
                                             "slot out of range")
        return cls(body["b"], body["p"], candidates)


@dataclass
class MergeProgress:
    emitted_upto: int = -(2**62)
    reported: dict[str, int] = field(default_factory=dict)   # partition (as str) -> last boundary reported

    @classmethod
    def decode(cls, value: bytes | None) -> MergeProgress:
        if not value:
            return cls()
        body = orjson.loads(value)
        return cls(int(body["emitted_upto"]), {str(k): int(v) for k, v in body["reported"].items()})

    def encode(self) -> bytes:
        return orjson.dumps({"emitted_upto": self.emitted_upto, "reported": self.reported})

    def is_new(self, message: CandidatesMessage) -> bool:
        """False for a message already merged (re-delivered after a crash)."""
        return (message.boundary > self.emitted_upto
                and self.reported.get(str(message.partition), -1) < message.boundary)

    def complete_upto(self, n_partitions: int) -> int | None:
        """Every boundary up to this one has been reported by every partition; None until all reported."""
        if len(self.reported) < n_partitions:
            return None
        return min(self.reported.values())


def record_id(window: dict, rank: int, model: dict) -> str:
    """Deterministic id of a trend record: 32 hex digits of sha256 over the step (window), rank and model."""
    key = "\0".join(str(part) for part in (window["end"], window["slot_s"], window["bucket_s"], rank,
                                            model["name"], model["version"], model["sha256"]))
    return hashlib.sha256(key.encode()).hexdigest()[:32]
