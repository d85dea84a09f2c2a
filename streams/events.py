"""Decoding and validating `clicks` messages (pure; no Kafka I/O here).

A message value is one click event (a JSON object) or an envelope (a JSON array of events). Every event
is checked against schemas/click-event.v1.json plus one rule a schema cannot express: event time may not
run more than `max_future_s` ahead of the wall clock (a far-future timestamp would drag the watermark
forward and make every later event late). Rejected events come back with a reason, never dropped.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import orjson

from schemas import CLICK_EVENT_V1, ValidationError, validator

MAX_REASON_CHARS = 300


@dataclass(frozen=True, slots=True)
class ClickEvent:
    item_id: str
    ts_ms: int
    user_id: str | None
    event_id: str | None


@dataclass(frozen=True, slots=True)
class Rejection:
    raw: bytes
    reason: str
    index: int | None    # position inside an envelope; None for a whole message


def decode_message(value: bytes | None, max_ts_ms: int) -> tuple[list[ClickEvent], list[Rejection]]:
    """Events and rejections of one message value; `max_ts_ms` is the latest acceptable event time."""
    if value is None:
        return [], [Rejection(b"", "empty message (null value)", None)]
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [], [Rejection(value, f"malformed JSON: {exc}"[:MAX_REASON_CHARS], None)]
    if isinstance(payload, list):
        events: list[ClickEvent] = []
        rejections: list[Rejection] = []
        for index, item in enumerate(payload):
            event, reason = validate_event(item, max_ts_ms)
            if event is None:
                rejections.append(Rejection(orjson.dumps(item), reason, index))
            else:
                events.append(event)
        return events, rejections
    event, reason = validate_event(payload, max_ts_ms)
    if event is None:
        return [], [Rejection(value, reason, None)]
    return [event], []


_validate_click = validator(CLICK_EVENT_V1)


def validate_event(obj: Any, max_ts_ms: int) -> tuple[ClickEvent | None, str]:
    """(event, "") for a valid click event v1, else (None, reason)."""
    try:
        _validate_click(obj)
    except ValidationError as exc:
        return None, f"schema click-event.v1: {exc.message}"[:MAX_REASON_CHARS]
    ts_ms = obj["ts"]
    if ts_ms > max_ts_ms:
        return None, f"ts {ts_ms} is more than the allowed skew ahead of wall-clock time ({max_ts_ms})"
    return ClickEvent(obj["item_id"], ts_ms, obj.get("user_id"), obj.get("event_id")), ""


def latest_acceptable_ts_ms(max_future_s: int, now_s: float | None = None) -> int:
    return int(((time.time() if now_s is None else now_s) + max_future_s) * 1000)


def dlq_record(rejection: Rejection, topic: str, partition: int, offset: int) -> bytes:
    """A DLQ record v1 (schemas/dlq-record.v1.json) as JSON bytes."""
    return orjson.dumps({
        "original": base64.b64encode(rejection.raw).decode(),
        "reason": rejection.reason,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "index": rejection.index,
        "rejected_at": int(time.time() * 1000),
    })
