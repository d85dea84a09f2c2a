"""Property tests of decode -> validate -> pre-aggregate (stage 1) and of the internal-message checks:
whatever bytes arrive, nothing raises, and every event is accounted for (counted, rejected or duplicate)."""

from __future__ import annotations

import base64
import hashlib
import json
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from models.windows import WindowSpec
from schemas import CLICK_EVENT_V1, DLQ_RECORD_V1, ValidationError, validator
from streams.deltas import (
    DeltaColumns,
    DeltaRouter,
    InvalidInternalMessage,
    decode_deltas,
    encode_deltas,
    encode_rejections,
)
from streams.events import (
    MAX_DLQ_ORIGINAL_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_NESTING_DEPTH,
    MIN_TS_MS,
    Rejection,
    decode_envelope,
    decode_message,
    dlq_record,
    plain_envelope,
    plainly_valid,
    validate_event,
)
from streams.merge import CandidatesMessage

NOW_MS = 1_764_000_000_000
MAX_TS_MS = NOW_MS + 86_400_000
SPEC = WindowSpec(slot_s=3600, bucket_s=86_400, n_buckets=4, allowed_lateness_s=0)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
timestamps = st.one_of(st.integers(MIN_TS_MS - 2, MIN_TS_MS + 2), st.integers(MAX_TS_MS - 2, MAX_TS_MS + 2),
                       st.integers(-(2**64), 2**64), st.floats(allow_nan=False), st.just(float(NOW_MS)),
                       st.integers(MIN_TS_MS, MAX_TS_MS))
item_ids = st.one_of(st.text(min_size=0, max_size=258), st.text(alphabet="𝄞é", min_size=255, max_size=258),
                     st.sampled_from(["a", "a\x00", "a\n", "x" * 256, "x" * 257]))
events = st.fixed_dictionaries({"item_id": item_ids, "ts": timestamps},
                               optional={"event_id": st.text(max_size=4), "user_id": st.text(max_size=4),
                                         "extra": json_values})


def account(values: list[bytes | None]) -> tuple[int, int, int, int]:
    """(events in, counted, rejected, duplicates) of one routed batch of messages."""
    router = DeltaRouter(4, SPEC, dedup_capacity=1000)
    batch = router.route([(i % 4, i, value) for i, value in enumerate(values)], MAX_TS_MS)
    counted = sum(sum(columns.counts) for columns in batch.deltas.values())
    events_in = 0
    for value in values:
        try:
            payload = orjson.loads(value or b"")
            events_in += len(payload) if isinstance(payload, list) else 1
        except orjson.JSONDecodeError:
            events_in += 1
    return events_in, counted, len(batch.rejections), batch.duplicates


@FAST
@given(st.binary(max_size=64) | st.none())
def test_arbitrary_bytes_never_raise_and_always_leave_a_trace(value):
    events, rejections = decode_message(value, MAX_TS_MS)
    assert events or rejections or value.strip() == b"[]"


@FAST
@given(st.lists(st.lists(events, max_size=6) | events, min_size=1, max_size=6))
def test_events_and_envelopes_conserve_every_event(payloads):
    values = [json.dumps(p).encode() for p in payloads]   # the stdlib writes integers beyond 64 bits too
    events_in, counted, rejected, duplicates = account(values)
    assert counted + rejected + duplicates == events_in


@FAST
@given(st.integers(MIN_TS_MS, MAX_TS_MS))
def test_an_integral_float_ts_is_rejected_and_the_same_integer_accepted(ts):
    ok, _ = decode_message(orjson.dumps({"item_id": "a", "ts": ts}), MAX_TS_MS)
    events, rejections = decode_message(b'{"item_id": "a", "ts": %d.0}' % ts, MAX_TS_MS)
    assert [e.ts_ms for e in ok] == [ts] and type(ok[0].ts_ms) is int
    assert events == [] and rejections[0].code in ("ts_not_integer", "schema")


@pytest.mark.parametrize("raw_ts", [b"1e400", b"18446744073709551616", b"170000000000000000000000", b"-1",
                                    b"946684799999", b"true", b'"1700000000000"'])
def test_timestamps_outside_the_contract_are_rejected(raw_ts):
    events, rejections = decode_message(b'[{"item_id": "a", "ts": %s}]' % raw_ts, MAX_TS_MS)
    assert events == [] and len(rejections) == 1


@pytest.mark.parametrize("depth", [MAX_NESTING_DEPTH - 2, MAX_NESTING_DEPTH - 1, MAX_NESTING_DEPTH,
                                   MAX_NESTING_DEPTH + 1, 255, 256, 1023, 1024, 1025, 5000])
def test_nesting_around_every_limit_is_counted_or_rejected_too_deep(depth):
    inner = b'"x"'
    for _ in range(depth - 2):  # the envelope and the event object are two levels
        inner = b'{"n": ' + inner + b"}"
    good = b'{"item_id": "good", "ts": %d}' % NOW_MS
    value = b"[" + good + b', {"item_id": "deep", "ts": %d, "meta": ' % NOW_MS + inner + b"}]"
    events, rejections = decode_message(value, MAX_TS_MS)
    if depth <= MAX_NESTING_DEPTH:
        assert [e.item_id for e in events] == ["good", "deep"] and not rejections
    else:
        assert events == [] and rejections[0].code == "too_deep"
        assert len(dlq_record(rejections[0], "clicks", 0, 1)) < 100_000


@pytest.mark.parametrize("size", [MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1, 5_000_000])
def test_messages_just_under_and_over_the_size_limit(size):
    head = b'{"item_id": "a", "ts": %d, "pad": "' % NOW_MS
    value = head + b"p" * (size - len(head) - 2) + b'"}'
    assert len(value) == size
    events, rejections = decode_message(value, MAX_TS_MS)
    if size <= MAX_MESSAGE_BYTES:
        assert len(events) == 1 and not rejections
    else:
        assert events == [] and rejections[0].code == "too_large"


def test_a_dlq_record_always_fits_and_identifies_the_whole_original():
    original = b"\xff" * (3 * MAX_MESSAGE_BYTES)
    record = orjson.loads(dlq_record(Rejection(original, "too large", None, "too_large"), "clicks", 2, 9))
    validator(DLQ_RECORD_V1)(record)
    assert record["truncated"] and record["original_length"] == len(original)
    assert record["original_sha256"] == hashlib.sha256(original).hexdigest()
    assert base64.b64decode(record["original"]) == original[:MAX_DLQ_ORIGINAL_BYTES]


@pytest.mark.parametrize("n_events", [0, 1, 100, 10_000, 100_000])
def test_envelopes_of_any_length_conserve_events(n_events):
    envelope = orjson.dumps([{"item_id": f"i{k % 97}", "ts": NOW_MS - k * 1000, "event_id": f"e{k % 5000}"}
                             for k in range(n_events)])
    events_in, counted, rejected, duplicates = account([envelope])
    if len(envelope) > MAX_MESSAGE_BYTES:   # the whole message goes to the DLQ, unread
        assert (counted, rejected, duplicates) == (0, 1, 0)
    else:
        assert counted + rejected + duplicates == events_in == n_events


def test_item_ids_that_differ_only_by_a_control_character_cannot_merge():
    events, rejections = decode_message(orjson.dumps([{"item_id": "a", "ts": NOW_MS},
                                                      {"item_id": "a\x00", "ts": NOW_MS}]), MAX_TS_MS)
    assert [e.item_id for e in events] == ["a"] and [r.index for r in rejections] == [1]


def test_ids_of_256_characters_pass_and_257_are_rejected():
    events, rejections = decode_message(orjson.dumps([{"item_id": "𝄞" * 256, "ts": NOW_MS},
                                                      {"item_id": "𝄞" * 257, "ts": NOW_MS}]), MAX_TS_MS)
    assert len(events) == 1 and len(rejections) == 1


@FAST
@given(json_values)
def test_arbitrary_json_as_a_deltas_message_is_applied_only_if_well_formed(body):
    try:
        source, watermark, columns, idle = decode_deltas(json.dumps(body).encode(), 4, MAX_TS_MS)
    except InvalidInternalMessage:
        return
    assert 0 <= source < 4 and watermark <= MAX_TS_MS


@pytest.mark.parametrize("forged", [
    {"src": 0, "wm": NOW_MS, "o": [10**18], "i": ["a"], "s": [1], "c": [1]},
    {"src": 0, "wm": 10**17, "o": [], "i": [], "s": [], "c": []},
    {"src": 9, "wm": NOW_MS},
    {"src": 0, "wm": NOW_MS, "o": [5, 4], "i": ["a", "b"], "s": [1, 1], "c": [1, 1]},
    {"src": 0, "wm": NOW_MS, "o": [1], "i": ["a"], "s": [1], "c": [-3]},
    {"src": 0, "wm": 1.5},
    {"src": 0, "wm": NOW_MS, "idle": True},                 # idle without the end offset it holds for
    {"src": 0, "wm": NOW_MS, "idle": True, "end": 10**18},
    {"src": 0, "wm": NOW_MS, "r": [[5, {"reason_code": "schema"}], [4, {"reason_code": "schema"}]]},
    {"src": 0, "wm": NOW_MS, "r": [[-1, {"reason_code": "schema"}]]},
    {"src": 0, "wm": NOW_MS, "r": [[1, "not a record"]]},
    {"src": 0, "wm": NOW_MS, "r": {"1": {}}},
    {"src": 0, "wm": NOW_MS, "o": [1], "i": ["a"], "s": [1], "c": [1], "r": [[1, {}]]},
])
def test_forged_deltas_messages_are_refused(forged):
    with pytest.raises(InvalidInternalMessage):
        decode_deltas(orjson.dumps(forged), 4, MAX_TS_MS)


def test_large_deltas_are_split_at_source_offsets_and_decode_to_the_same_entries():
    n = 40_000
    columns = DeltaColumns([k // 10 for k in range(n)], [f"item-{k:08d}-" + "x" * 40 for k in range(n)],
                           [k % 50 for k in range(n)], [1] * n)
    messages = encode_deltas(1, NOW_MS, columns)
    assert len(messages) > 1 and all(len(m) < 2 * 512 * 1024 for m in messages)
    parts = [decode_deltas(m, 4, MAX_TS_MS)[2] for m in messages]
    assert sum((p.offsets for p in parts), []) == columns.offsets
    assert all(p.offsets[-1] < q.offsets[0] for p, q in zip(parts, parts[1:], strict=False))


def test_forged_candidates_are_refused():
    good = {"item_id": "a", "counts": [1, 2, 3, 4], "last_event_slot": 5, "forecast": 3.0, "text": "", "model": "m"}
    CandidatesMessage.decode(orjson.dumps({"b": 9, "p": 0, "candidates": [good]}), 4, 10, 4)
    for forged in ({"b": 9, "p": 7, "candidates": [good]},
                   {"b": 9, "p": 0, "candidates": [good] * 11},
                   {"b": 9, "p": 0, "candidates": [{**good, "counts": [0, 0, 0, 0]}]},
                   {"b": 9, "p": 0, "candidates": [{**good, "text": "t" * 5000}]},
                   {"b": 9, "p": 0, "candidates": [{**good, "last_event_slot": 9}]},
                   {"b": 9, "p": 0, "candidates": [{**good, "explanation": "made up"}]}):
        with pytest.raises(InvalidInternalMessage):
            CandidatesMessage.decode(orjson.dumps(forged), 4, 10, 4)


def schema_accepts(obj) -> bool:
    try:
        validator(CLICK_EVENT_V1)(obj)
    except ValidationError:
        return False
    return True


optional_strings = st.one_of(st.text(max_size=3), st.text(min_size=63, max_size=66),
                             st.text(min_size=255, max_size=258),
                             json_scalars)
maybe_events = st.fixed_dictionaries({"item_id": item_ids | json_scalars, "ts": timestamps | json_scalars},
                                     optional={"event_id": optional_strings, "user_id": optional_strings,
                                               "event_type": optional_strings, "extra": json_values})


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(maybe_events | json_values)
def test_the_plain_python_check_accepts_only_what_the_schema_accepts(obj):
    if plainly_valid(obj):
        assert schema_accepts(obj), obj
    if schema_accepts(obj) and isinstance(obj, dict) and type(obj.get("ts")) is int:
        assert plainly_valid(obj), obj   # and misses none of the ordinary ones (else it would be no fast path)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(maybe_events | json_values, max_size=6))
def test_an_envelope_decodes_each_element_as_the_full_check_would(elements):
    """decode_envelope's inline fast path for ordinary events agrees with validate_event, element by element."""
    try:
        elements = orjson.loads(orjson.dumps(elements))   # as a message would hold them (64-bit integers)
    except TypeError:
        assume(False)
    events, rejections = decode_envelope(elements, MAX_TS_MS)
    expected_events, expected_rejections = [], []
    for index, element in enumerate(elements):
        event, reason, code = validate_event(element, MAX_TS_MS)
        if event is None:
            expected_rejections.append((index, reason, code))
        else:
            expected_events.append(event)
    assert events == expected_events
    assert [(r.index, r.reason, r.code) for r in rejections] == expected_rejections


def assert_plain_envelope_agrees(value: bytes) -> bool:
    """plain_envelope(value) is None or exactly what decode_message makes of it; True if it was not None."""
    plain = plain_envelope(value, MAX_TS_MS)
    if plain is None:
        return False
    events, rejections = decode_message(value, MAX_TS_MS)
    assert rejections == [], value
    assert all(event.event_id is None for event in events), value
    assert (plain.item_ids, plain.ts_ms) == ([e.item_id for e in events], [e.ts_ms for e in events]), value
    assert plain.newest_ts_ms == max(plain.ts_ms)
    return True


def routed(router: DeltaRouter, messages: list[tuple[int, int, bytes]]) -> tuple[dict, dict, int]:
    batch = router.route(messages, MAX_TS_MS)
    deltas = {key: (c.offsets, c.items, c.slots, c.counts, c.event_ids) for key, c in batch.deltas.items() if c.offsets}
    return deltas, batch.watermarks, batch.events


@FAST
@given(st.lists(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "é", "𝄞", "i1", "i2"]),
                                   st.integers(NOW_MS - 3 * 3_600_000, NOW_MS)
                                   | st.integers(NOW_MS - 40 * 3_600_000, NOW_MS)), min_size=1, max_size=30),
                min_size=1, max_size=6))
def test_the_router_gives_the_same_deltas_with_and_without_the_compiled_path(envelopes):
    """Entries (per source message, per target partition, in first-appearance order) and watermarks are the
    same whether an envelope takes the compiled path (one slot, several, or more than it groups) or the full
    check."""
    messages = [(k % 2, k, orjson.dumps([{"item_id": item, "ts": ts} for item, ts in envelope]))
                for k, envelope in enumerate(envelopes)]
    fast = routed(DeltaRouter(4, SPEC, dedup_capacity=1000), messages)
    with mock.patch("streams.deltas.plain_envelope", lambda *args: None):
        full = routed(DeltaRouter(4, SPEC, dedup_capacity=1000), messages)
    assert fast == full


@pytest.mark.parametrize("n_slots", [16, 17, 40])
def test_an_envelope_over_many_slots_gives_the_same_deltas_as_the_full_check(n_slots):
    """Past 16 distinct slots in one envelope, the compiled counting leaves it to Counter in Python."""
    envelope = [{"item_id": f"i{k % 5}", "ts": NOW_MS - (k * 7919 % n_slots) * 3_600_000} for k in range(3 * n_slots)]
    messages = [(0, 3, orjson.dumps(envelope)), (1, 4, orjson.dumps(envelope[::-1]))]
    fast = routed(DeltaRouter(4, SPEC, dedup_capacity=1000), messages)
    with mock.patch("streams.deltas.plain_envelope", lambda *args: None):
        full = routed(DeltaRouter(4, SPEC, dedup_capacity=1000), messages)
    assert fast == full
    pairs = {(event["item_id"], event["ts"] // SPEC.slot_ms) for event in envelope}
    assert len({slot for _, slot in pairs}) == n_slots
    assert sum(len(entries[1]) for entries in fast[0].values()) == 2 * len(pairs)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(maybe_events | json_values, max_size=6), st.sampled_from(["orjson", "ascii", "spaced"]))
def test_the_compiled_envelope_path_accepts_only_what_the_full_check_accepts(elements, encoding):
    """streams.events.plain_envelope (compiled) against decode_message (orjson + the schema's rules), over
    envelopes written by different JSON writers (raw UTF-8, escapes for every non-ASCII character, whitespace)."""
    try:
        if encoding == "orjson":
            value = orjson.dumps(elements)
        else:
            value = json.dumps(elements, ensure_ascii=encoding == "ascii",
                               indent=1 if encoding == "spaced" else None).encode()
    except (TypeError, ValueError):
        assume(False)
    assert_plain_envelope_agrees(value)


@FAST
@given(st.lists(st.fixed_dictionaries({"item_id": st.text(alphabet="abcxyz019-_é𝄞", min_size=1, max_size=256),
                                       "ts": st.integers(MIN_TS_MS, MAX_TS_MS)},
                                      optional={"user_id": st.text(alphabet="uvw1", min_size=1, max_size=256),
                                                "event_type": st.sampled_from(["click", "view"])}),
                min_size=1, max_size=8),
       st.binary(max_size=3), st.integers(0, 400))
def test_the_compiled_envelope_path_takes_ordinary_envelopes_and_refuses_their_corruptions(elements, junk, at):
    value = orjson.dumps(elements)
    assert assert_plain_envelope_agrees(value)   # ordinary envelopes never miss the fast path
    assert_plain_envelope_agrees(value[:at] + junk + value[at:])
    assert_plain_envelope_agrees(value[:at] + value[at + len(junk):])


@pytest.mark.parametrize("value", [
    b'[{"item_id":"a","ts":1764000000000,"ts":1.0}]', b'[{"item_id":"a","ts":1764000000000,"ts":17640000000001}]',
    rb'[{"item_id":"a\u0000","ts":1764000000000}]', rb'[{"item_id":"a\u007f","ts":1764000000000}]',
    b'[{"item_id":"a","ts":1764000000000}]', b'[{"item_id":"a","ts":1764000000000,"user_id":null}]',
    b'[{"item_id":"a","ts":99999999999999999999999}]', b'[{"item_id":"a","ts":1764000000000,"event_id":"e"}]',
    b'[{"item_id":"a","ts":1764000000000,"extra":1}]', b'[{"item_id":"a","ts":1764000000000}, 1]',
    b'[{"item_id":"a","ts":946684799999}]', b'[]', b'[{"item_id":"","ts":1764000000000}]',
    b'[{"item_id":"a","ts":1764000000000,"event_type":""}]',
])
def test_the_compiled_envelope_path_leaves_every_edge_to_the_full_check(value):
    assert plain_envelope(value, MAX_TS_MS) is None
    assert_plain_envelope_agrees(value)


TS = b"1764000000000"


@pytest.mark.parametrize("value", [
    b'[{"item_id":"a","ts":01764000000000}]', b'[{"item_id":"a","ts":-0}]', b'[{"item_id":"a","ts":1764000000000e0}]',
    b'[{"item_id":"a","ts":1764000000000.5}]', b'[{"item_id":"a","ts":"1764000000000"}]', b'[{"item_id":"a"}]',
    b'[{"ts":' + TS + b'}]', b'[{"item_id":"a","item_id":"b","ts":' + TS + b'}]',
    b'[{"item_id":"a","ts":' + TS + b'},]', b'[{"item_id":"a","ts":' + TS + b'}]x',
    b'[{"item_id":"a","ts":' + TS + b'}', b'[{"item_id":"a","ts":' + TS + b',}]',
    b'[{"item_id":"a" "ts":' + TS + b'}]', b'[{"item_id":1,"ts":' + TS + b'}]', b'[{"item_id":["a"],"ts":' + TS + b'}]',
    b'[{"item_id":"\xff","ts":' + TS + b'}]', b'[{"item_id":"\xed\xa0\x80","ts":' + TS + b'}]',
    b'[{"item_id":"\xc0\xaf","ts":' + TS + b'}]', b'[{"item_id":"a\x1f","ts":' + TS + b'}]',
    b'[{"item_id":"' + b"a" * 257 + b'","ts":' + TS + b'}]',
    b'[{"item_id":"' + "é".encode() * 257 + b'","ts":' + TS + b'}]',
    b'[{"item_id":"a","ts":' + TS + b',"event_type":"' + b"v" * 65 + b'"}]',
    b'[{"item_id":"a","ts":' + TS + b',"user_id":""}]', b'[{"item_id":"a","ts":' + TS + b',"user_id":7}]',
    b'[{"item_id":"a","ts":' + TS + b',"Item_id":"b"}]', b'[{"item_id":"a","ts":' + TS + b'}][]',
    b'[{"item_id":"a","ts":1000000000000000000}]', b'[{"item_id":"a","ts":9223372036854775808}]',
    b'[[{"item_id":"a","ts":' + TS + b'}]]', b'[{}]', b'[ ]', b'[{"item_id":"a","ts":' + TS + b'}]\x00',
])
def test_the_scanner_leaves_these_to_the_full_check(value):
    assert plain_envelope(value, MAX_TS_MS) is None
    assert_plain_envelope_agrees(value)


@pytest.mark.parametrize("value", [
    b' [ { "item_id" : "a" , "ts" : ' + TS + b' } ,\n\t{"ts":' + TS + b',"item_id":"b"} ] \r\n',
    b'[{"event_type":"' + b"v" * 64 + b'","user_id":"' + "é".encode() * 256
    + b'","ts":' + TS + b',"item_id":"' + "𝄞".encode() * 256 + b'"}]',
    b'[{"item_id":"a","ts":946684800000}]', b'[{"item_id":"/ \xe2\x80\xa8 <>","ts":' + TS + b'}]',
])
def test_the_scanner_takes_plain_envelopes_however_they_are_written(value):
    assert assert_plain_envelope_agrees(value)


@FAST
@given(st.lists(st.fixed_dictionaries({"item_id": st.text(min_size=1, max_size=5), "ts": st.integers(MIN_TS_MS,
                                                                                                    MAX_TS_MS)}),
                min_size=1, max_size=4), st.integers(0, 10_000))
def test_every_truncation_and_byte_flip_of_an_envelope_is_never_taken_wrongly(elements, seed):
    value = orjson.dumps(elements)
    for cut in range(len(value)):
        assert_plain_envelope_agrees(value[:cut])
    at = seed % len(value)
    for byte in (0x00, 0x22, 0x2c, 0x5c, 0x7b, 0x7d, 0x7f, 0x80, 0xff, seed % 256):
        assert_plain_envelope_agrees(value[:at] + bytes([byte]) + value[at + 1:])


def test_dlq_records_are_split_at_source_offsets_and_decode_to_the_same_records():
    rejected = [(k // 3, orjson.dumps({"offset": k // 3, "k": k, "original": "x" * 20_000})) for k in range(90)]
    messages = encode_rejections(2, NOW_MS, rejected)
    parts = [decode_deltas(m, 4, MAX_TS_MS)[2].rejected for m in messages]
    assert len(messages) > 1 and all(len(m) < 2 * 512 * 1024 for m in messages)
    assert [(o, orjson.dumps(r)) for part in parts for (o, r) in part] == rejected
    assert all(p[-1][0] < q[0][0] for p, q in zip(parts, parts[1:], strict=False))


def reference_columns_ok(offsets, items, slots, counts, max_ts_ms) -> bool:
    """The deltas entry rules, element by element, as a careful reader states them."""
    return (all(type(o) is int and 0 <= o < 2**53 for o in offsets)
            and all(b >= a for a, b in zip(offsets, offsets[1:], strict=False))
            and all(type(i) is str and 1 <= len(i) <= 256 for i in items)
            and all(type(s) is int and 0 <= s <= max_ts_ms for s in slots)
            and all(type(c) is int and 1 <= c < 2**31 for c in counts))


column_values = st.one_of(st.integers(-2, 3), st.sampled_from([2**31 - 1, 2**31, 2**53 - 1, 2**53, MAX_TS_MS,
                                                               MAX_TS_MS + 1, True, False, 1.0, None, "a"]),
                          st.text(max_size=3), st.sampled_from(["x" * 256, "x" * 257, ""]))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 4).flatmap(lambda n: st.tuples(*(st.lists(column_values, min_size=n, max_size=n)
                                                       | st.lists(st.integers(0, 5), min_size=n, max_size=n)
                                                       | st.lists(st.text(min_size=1, max_size=4), min_size=n,
                                                                  max_size=n)
                                                       for _ in range(4)))))
def test_deltas_entries_are_checked_as_a_careful_reader_checks_them(columns):
    """decode_deltas' whole-column checks (builtins over each column) refuse exactly what a per-element reading
    of the rules refuses."""
    offsets, items, slots, counts = columns
    value = orjson.dumps({"src": 0, "wm": NOW_MS, "o": offsets, "i": items, "s": slots, "c": counts})
    expected_ok = reference_columns_ok(offsets, items, slots, counts, MAX_TS_MS)
    try:
        decode_deltas(value, 4, MAX_TS_MS)
        ok = True
    except InvalidInternalMessage:
        ok = False
    assert ok == expected_ok, columns


@FAST
@given(st.lists(st.binary(max_size=40) | st.none(), max_size=30), st.integers(1, 100))
def test_stage_one_chunks_keep_every_message_in_order_and_near_the_byte_limit(values, limit):
    from streams.stage_one import chunks_of_bytes

    messages = [(k % 3, k, value) for k, value in enumerate(values)]
    chunks = chunks_of_bytes(messages, limit)
    assert [m for chunk in chunks for m in chunk] == messages and all(chunks)
    for chunk in chunks[:-1]:   # every chunk but the last reaches the limit with its last message only
        sizes = [len(v or b"") for _, _, v in chunk]
        assert sum(sizes) >= limit > sum(sizes[:-1])
