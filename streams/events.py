"""Decoding and validating `clicks` messages (pure; no Kafka I/O here).

A message value is one click event (a JSON object) or an envelope (a JSON array of events). Every event
is checked against schemas/click-event.v1.json plus the rules a schema cannot express: `ts` is a JSON
integer (not 1.0, not a number too large for 64 bits, which the parser turns into a float), not before
`min_ts_ms` (default 2000-01-01; older logs such as MovieLens-100K need an earlier one), and not more
than `max_future_s` ahead of the wall clock (a far-future timestamp would drag the watermark forward and
make every later event late). Limits are explicit: a message over `MAX_MESSAGE_BYTES` is rejected "too
large" unread, one nesting deeper than `MAX_NESTING_DEPTH` "too deep". Rejected events come back with a
reason, never dropped, and nothing a message holds can make `decode_message` raise: every input message
ends as events or rejections.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from schemas import CLICK_EVENT_V1, ValidationError, validator
from streams._fastpath import scan_plain_envelope

MAX_REASON_CHARS = 300
MAX_MESSAGE_BYTES = 1_048_576          # Kafka's default max message size; bigger ones are not read
MAX_NESTING_DEPTH = 32                 # arrays/objects inside one message, the envelope included
MIN_TS_MS = 946_684_800_000            # 2000-01-01T00:00:00Z, the default earliest event time (--min-event-time)
MAX_DLQ_ORIGINAL_BYTES = 65_536        # a DLQ record keeps this much of the original, plus length and sha256


class ClickEvent(NamedTuple):
    """A valid click event (a tuple: an envelope makes one per event, and a frozen dataclass cost ~1 us each)."""

    item_id: str
    ts_ms: int
    user_id: str | None
    event_id: str | None


@dataclass(frozen=True, slots=True)
class Rejection:
    raw: bytes
    reason: str
    index: int | None    # position inside an envelope; None for a whole message
    code: str = "schema"


def decode_message(value: bytes | None, max_ts_ms: int,
                   min_ts_ms: int = MIN_TS_MS) -> tuple[list[ClickEvent], list[Rejection]]:
    """Events and rejections of one message value; event times must lie in [min_ts_ms, max_ts_ms]."""
    if value is None:
        return [], [Rejection(b"", "empty message (null value)", None, "empty")]
    if len(value) > MAX_MESSAGE_BYTES:
        return [], [Rejection(value, f"too large: {len(value)} bytes, the limit is {MAX_MESSAGE_BYTES}", None,
                              "too_large")]
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        code = "too_deep" if "depth limit" in str(exc) else "malformed"
        reason = f"too deep: more than {MAX_NESTING_DEPTH} levels" if code == "too_deep" else f"malformed JSON: {exc}"
        return [], [Rejection(value, reason[:MAX_REASON_CHARS], None, code)]
    if too_deep(value, payload):
        return [], [Rejection(value, f"too deep: more than {MAX_NESTING_DEPTH} levels of nesting", None, "too_deep")]
    if isinstance(payload, list):
        return decode_envelope(payload, max_ts_ms, min_ts_ms)
    event, reason, code = validate_event(payload, max_ts_ms, min_ts_ms)
    if event is None:
        return [], [Rejection(value, reason, None, code)]
    return [event], []


class PlainEnvelope(NamedTuple):
    """The events of a `plain_envelope`, as columns, with their newest event time (the watermark's input)."""

    item_ids: list[str]
    ts_ms: list[int]
    newest_ts_ms: int


def plain_envelope(value: bytes | None, max_ts_ms: int, min_ts_ms: int = MIN_TS_MS) -> PlainEnvelope | None:
    """The events of an envelope whose every event is valid and carries no event id, scanned and checked in
    one compiled pass (`streams/_fastpath.c`; `trail bench route`: 0.21 us per event, 0.43x `orjson.loads` of the
    same bytes, against ~2 us for `decode_message`); None for any other message, which `decode_message` then
    reads in full and gives the reasons for.

    Never accepts what `decode_message` rejects (tests/test_input_properties.py): the scanner takes only keys
    `item_id`, `ts`, `user_id` and `event_type`, each once, strings of valid UTF-8 within the schema's lengths
    and without escapes, control characters or DEL, and a `ts` that is a JSON integer in [min_ts_ms,
    max_ts_ms]; a float, a null, an unknown or repeated key, or anything else sends the message to the full
    check."""
    if value is None or len(value) > MAX_MESSAGE_BYTES:
        return None
    scanned = scan_plain_envelope(value, *accepted_ts_range(max_ts_ms, min_ts_ms))
    return None if scanned is None else PlainEnvelope(*scanned)


def decode_envelope(payload: list, max_ts_ms: int, min_ts_ms: int = MIN_TS_MS) -> tuple[list[ClickEvent],
                                                                                        list[Rejection]]:
    events: list[ClickEvent] = []
    rejections: list[Rejection] = []
    add = events.append
    lower_ts_ms, upper_ts_ms = accepted_ts_range(max_ts_ms, min_ts_ms)
    for index, item in enumerate(payload):
        # inline fast path for the ordinary event: item_id and ts in range, optionally user_id and event_id as
        # short strings, no other key (stricter than plainly_valid: isprintable() refuses more than control
        # characters); anything else takes the full check, which also gives the reasons
        if type(item) is dict:
            item_id, ts_ms = item.get("item_id"), item.get("ts")
            if (type(item_id) is str and type(ts_ms) is int and 0 < len(item_id) <= 256 and item_id.isprintable()
                    and lower_ts_ms <= ts_ms <= upper_ts_ms):
                user_id, event_id = item.get("user_id"), item.get("event_id")
                if (len(item) == 2 + (user_id is not None) + (event_id is not None)
                        and (user_id is None or (type(user_id) is str and 0 < len(user_id) <= 256))
                        and (event_id is None or (type(event_id) is str and 0 < len(event_id) <= 256))):
                    add(ClickEvent(item_id, ts_ms, user_id, event_id))
                    continue
        event, reason, code = validate_event(item, max_ts_ms, min_ts_ms)
        if event is None:
            rejections.append(Rejection(orjson.dumps(item), reason, index, code))
        else:
            events.append(event)
    return events, rejections


def accepted_ts_range(max_ts_ms: int, min_ts_ms: int = MIN_TS_MS) -> tuple[int, int]:
    """[lowest, highest] event time an event may carry: the schema's bounds and this worker's, together."""
    return max(min_ts_ms, 0), min(max_ts_ms, _MAX_SCHEMA_TS_MS)


def too_deep(value: bytes, payload: Any) -> bool:
    """True if `payload` nests deeper than MAX_NESTING_DEPTH (walked only when the bytes allow it)."""
    containers = value.count(b"[") + value.count(b"{")
    flat_size = 1 + (len(payload) if isinstance(payload, list) else 0)
    if containers <= flat_size:   # one array of flat objects at most: nothing to walk
        return False
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


_validate_click = validator(CLICK_EVENT_V1)
_CONTROL_CHAR = re.compile("[\u0000-\u001f\u007f]")
_MAX_SCHEMA_TS_MS = 32_503_680_000_000                    # the schema's `ts` maximum (year 3000)
_OPTIONAL_STRINGS = (("user_id", 256), ("event_id", 256), ("event_type", 64))


def plainly_valid(obj: Any) -> bool:
    """True only for events the schema accepts, checked in plain Python: the compiled validator raises and
    catches an exception per event for the item id's `not pattern` (a third of an envelope's ingest time,
    py-spy). False means "ask the schema", which gives the reason; it never accepts what the schema rejects
    (tests/test_input_properties.py)."""
    if type(obj) is not dict:
        return False
    item_id, ts_ms = obj.get("item_id"), obj.get("ts")
    if type(item_id) is not str or not 0 < len(item_id) <= 256 or _CONTROL_CHAR.search(item_id):
        return False
    if type(ts_ms) is not int or not 0 <= ts_ms <= _MAX_SCHEMA_TS_MS:
        return False
    for key, max_length in _OPTIONAL_STRINGS:
        if key in obj:
            value = obj[key]
            if type(value) is not str or not 0 < len(value) <= max_length:
                return False
    return True


def validate_event(obj: Any, max_ts_ms: int, min_ts_ms: int = MIN_TS_MS) -> tuple[ClickEvent | None, str, str]:
    """(event, "", "") for a valid click event v1, else (None, reason, reason code)."""
    if not plainly_valid(obj):
        try:
            _validate_click(obj)
        except ValidationError as exc:
            return None, f"schema click-event.v1: {exc.message}"[:MAX_REASON_CHARS], "schema"
    ts_ms = obj["ts"]
    if type(ts_ms) is not int:
        return None, f"ts {ts_ms!r} is not an integer number of epoch milliseconds", "ts_not_integer"
    if ts_ms < min_ts_ms:
        return None, f"ts {ts_ms} is before the earliest accepted event time {min_ts_ms} (--min-event-time)", \
            "ts_too_old"
    if ts_ms > max_ts_ms:
        return None, f"ts {ts_ms} is more than the allowed skew ahead of wall-clock time ({max_ts_ms})", \
            "ts_in_future"
    return ClickEvent(obj["item_id"], ts_ms, obj.get("user_id"), obj.get("event_id")), "", ""


def latest_acceptable_ts_ms(max_future_s: int, now_s: float | None = None) -> int:
    return int(((time.time() if now_s is None else now_s) + max_future_s) * 1000)


def dlq_record(rejection: Rejection, topic: str, partition: int, offset: int) -> bytes:
    """A DLQ record v1 (schemas/dlq-record.v1.json) as JSON bytes; always under ~90 KB.

    The original is cut to MAX_DLQ_ORIGINAL_BYTES; its full length and sha256 identify it.
    """
    raw = rejection.raw
    return orjson.dumps({
        "original": base64.b64encode(raw[:MAX_DLQ_ORIGINAL_BYTES]).decode(),
        "original_length": len(raw),
        "original_sha256": hashlib.sha256(raw).hexdigest(),
        "truncated": len(raw) > MAX_DLQ_ORIGINAL_BYTES,
        "reason": rejection.reason[:MAX_REASON_CHARS] or "rejected",
        "reason_code": rejection.code,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "index": rejection.index,
        "rejected_at": int(time.time() * 1000),
    })
