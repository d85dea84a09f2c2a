"""Black-box input contract through a real worker and the embedded broker: every message is counted, in the
DLQ with its reason, or a duplicate (conservation), internal topics refuse forged messages, and no input
stops the output (issues 11 and 12)."""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from infra.internal_auth import InternalKeys, load_internal_keys
from tests.streamkit import BASE_TS_MS, DAY_MS, by_step, make_events
from tests.test_stream_e2e import assert_counts_match_recount, last_step_end, wait_for_step

pytestmark = pytest.mark.broker
HOUR_MS = 3_600_000


def produce_to(replay, topic: str, values: list[tuple[int | None, bytes | None, bytes | None]],
               headers: list[tuple[str, bytes]] | None = None) -> None:
    """(partition, key, value) records, each on the partition given (None: the client's choice)."""
    producer = Producer({"bootstrap.servers": replay.bootstrap, "message.max.bytes": 8_000_000})
    for partition, key, value in values:
        kwargs = {} if partition is None else {"partition": partition}
        producer.produce(topic, value, key=key, headers=headers, **kwargs)
    assert producer.flush(30) == 0


def produce_signed(replay, keys: InternalKeys, topic: str, values: list[tuple[int, bytes]]) -> None:
    """(partition, value) records tagged with the app's key, as a worker tags them."""
    for partition, value in values:
        produce_to(replay, topic, [(partition, None, value)], headers=keys.headers(topic, partition, None, value))


def first_entries_message(replay, topic: str, timeout_s: float = 30) -> tuple[int, bytes, list]:
    """(partition, value, headers) of the first message with count entries on an internal deltas topic."""
    consumer = Consumer({"bootstrap.servers": replay.bootstrap, "group.id": f"{topic}-reader",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(replay.partitions)])
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and not message.error() and b'"o":' in message.value():
                return message.partition(), message.value(), message.headers()
    finally:
        consumer.close()
    raise TimeoutError(f"no deltas message with entries on {topic}")


def wait_committed(replay, topic: str, timeout_s: float = 30) -> None:
    """Poll until the worker's group has committed every message of `topic` (end offsets read back from the
    topic itself: tansu's ListOffsets is off for multi-record batches)."""
    reader = Consumer({"bootstrap.servers": replay.bootstrap, "group.id": f"{topic}-ends", "enable.auto.commit": False})
    try:
        partitions = list(reader.list_topics(topic, timeout=10).topics[topic].partitions)
        reader.assign([TopicPartition(topic, p, 0) for p in partitions])
        ends, quiet_since = {}, time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            message = reader.poll(0.2)
            if message is not None and message.error() is None:
                ends[message.partition()] = message.offset() + 1
                quiet_since = time.monotonic()
        deadline = time.monotonic() + timeout_s
        group = Consumer({"bootstrap.servers": replay.bootstrap, "group.id": replay.name, "enable.auto.commit": False})
        try:
            while time.monotonic() < deadline:
                committed = group.committed([TopicPartition(topic, p) for p in ends], timeout=10)
                if all(tp.offset >= ends[tp.partition] for tp in committed):
                    return
                time.sleep(0.3)
        finally:
            group.close()
    finally:
        reader.close()
    raise TimeoutError(f"group {replay.name} never committed {topic} up to {ends}")


def conserved(status: dict, events_in: int) -> bool:
    return status.get("counted", 0) + status.get("dlq", 0) + status.get("duplicates", 0) == events_in


def test_one_bad_message_never_loses_the_good_ones_of_its_batch(make_replay, unique_topic, tmp_path):
    good = make_events(600, n_items=6, days=10, seed=21)
    deep = {"item_id": "deep", "ts": good[0]["ts"]}
    node = deep
    for _ in range(300):
        node["m"] = {}
        node = node["m"]
    bad = [orjson.dumps([{"item_id": "in-deep-envelope", "ts": good[0]["ts"]}]).replace(b"}]", b', "x": '
                                                                                     + b"[" * 300 + b"]" * 300 + b"}]"),
           b'{"item_id": "huge", "ts": %d, "pad": "%s"}' % (good[0]["ts"], b"p" * 2_000_000)]
    replay = make_replay(unique_topic("badbatch"), tmp_path, top_k=6)
    worker = replay.start_worker()
    replay.wait_assigned()
    values = [orjson.dumps(e) for e in good[:300]] + bad + [orjson.dumps(e) for e in good[300:]]
    produce_to(replay, replay.topics["clicks"], [(None, None, v) for v in values])   # one take_events batch
    status = worker.wait_for(lambda s: conserved(s, len(good) + 2), 90, "every message accounted for")
    dlq = replay.records("dlq", idle_exit_s=3)
    assert worker.alive() and status["counted"] == len(good) and status["dlq"] == 2
    assert sorted(r["reason_code"] for r in dlq) == ["too_deep", "too_large"]
    huge = next(r for r in dlq if r["reason_code"] == "too_large")
    assert huge["truncated"] and huge["original_length"] > 2_000_000


def test_an_integral_float_ts_goes_to_the_dlq_and_a_restart_still_counts(make_replay, unique_topic, tmp_path):
    events = make_events(300, n_items=5, days=5, seed=22)
    replay = make_replay(unique_topic("floatts"), tmp_path, top_k=5)
    worker = replay.start_worker()
    replay.wait_assigned()
    replay.produce_raw([b'{"item_id": "f", "ts": %d.0}' % events[0]["ts"], b'{"item_id": "g", "ts": 1.7e12}'])
    replay.produce(events[:150])
    worker.wait_for(lambda s: conserved(s, 152), 60, "first half accounted for")
    # the restart must not DLQ them again only once their offsets are committed (faust commits every 2.8 s;
    # the kill used to come after it only because every hop was slow)
    wait_committed(replay, replay.topics["clicks"])
    worker.kill()
    worker = replay.start_worker()
    replay.produce(events[150:])
    status = worker.wait_for(lambda s: s.get("counted", 0) >= 150, 90, "second half counted after a restart")
    assert status["counted"] == 150 and worker.alive()
    codes = sorted(r["reason_code"] for r in replay.records("dlq", idle_exit_s=3))
    assert codes == ["ts_not_integer", "ts_not_integer"]


def test_an_event_from_years_ago_is_late_and_does_not_stall_the_steps(make_replay, unique_topic, tmp_path):
    events = make_events(2000, n_items=8, days=3, seed=23)
    ancient = {"item_id": "ancient", "ts": BASE_TS_MS - 4 * 365 * DAY_MS, "event_id": "old"}
    replay = make_replay(unique_topic("ancient"), tmp_path, top_k=8,
                         extra_args=["--slot-s", "3600", "--bucket-s", "86400", "--n-buckets", "2",
                                     "--allowed-lateness-s", "0"])
    worker = replay.start_worker()
    replay.wait_assigned()
    replay.produce(events[:10])
    worker.wait_for(lambda s: s.get("counted", 0) >= 10, 60, "the first events")
    replay.produce([ancient])
    replay.produce(events[10:])
    last_end = (max(e["ts"] for e in events) // HOUR_MS) * HOUR_MS
    started = time.monotonic()
    records = wait_for_step(replay, last_end, timeout_s=90)
    status = worker.status()
    assert time.monotonic() - started < 60
    assert status["counted"] == len(events) + 1 and status["late"] >= 1
    assert all(r["item_id"] != "ancient" for r in records)


def test_an_idle_input_partition_does_not_stop_the_output(make_replay, unique_topic, tmp_path):
    replay = make_replay(unique_topic("idle"), tmp_path, top_k=5,
                         extra_args=["--slot-s", "3600", "--bucket-s", "86400", "--n-buckets", "2",
                                     "--allowed-lateness-s", "0", "--source-idle-timeout-s", "3",
                                     "--idle-flush-s", "0"])
    worker = replay.start_worker()
    replay.wait_assigned()
    base = BASE_TS_MS
    # partition 3 hears one event, then nothing; 0-2 advance 18 hours of event time
    values = [(3, b"k", orjson.dumps({"item_id": "quiet", "ts": base}))]
    values += [(p, b"k", orjson.dumps({"item_id": f"i{p}-{k % 4}", "ts": base + k * 60_000}))
               for k in range(18 * 60) for p in range(3)]
    produce_to(replay, replay.topics["clicks"], values[:1])
    for start in range(1, len(values), 270):   # the other three keep sending, for ~10 s of wall clock
        produce_to(replay, replay.topics["clicks"], values[start:start + 270])
        time.sleep(0.5)
    records = wait_for_step(replay, base + 17 * HOUR_MS, timeout_s=60)
    assert worker.alive() and records
    # partition 3 comes back behind the watermark: counted and reported late, and steps go on
    produce_to(replay, replay.topics["clicks"], [(3, b"k", orjson.dumps({"item_id": "back", "ts": base + HOUR_MS}))]
               + [(p, b"k", orjson.dumps({"item_id": "i0-0", "ts": base + 20 * HOUR_MS})) for p in range(4)])
    status = worker.wait_for(lambda s: s.get("late", 0) >= 1, 30, "the late event reported")
    assert status["counted"] == len(values) + 5


def test_control_character_ids_and_bad_catalogue_records_go_to_the_dlq(make_replay, unique_topic, tmp_path):
    replay = make_replay(unique_topic("ids"), tmp_path, top_k=5)
    worker = replay.start_worker()
    replay.wait_assigned()
    ts = BASE_TS_MS
    replay.produce_raw([orjson.dumps([{"item_id": "a", "ts": ts}, {"item_id": "a\x00", "ts": ts},
                                      {"item_id": "a\n", "ts": ts}])])
    produce_to(replay, replay.topics["items"], [
        (0, b"a", orjson.dumps({"item_id": "a", "text": "Alpha (1995) | Drama"})),
        (0, b"b", orjson.dumps({"item_id": "not-b", "text": "mismatched key"})),
        (0, b"c", b"{not json"),
        (0, b"d", orjson.dumps({"item_id": "d", "text": "t" * 50_000})),
        (0, None, orjson.dumps({"item_id": "e", "text": "no key"})),
    ])
    status = worker.wait_for(lambda s: s.get("dlq", 0) + s.get("dlq_internal", 0) >= 6 and s.get("counted", 0) >= 1
                             and s.get("catalogue_items", 0) >= 1, 60, "every record accounted for")
    assert status["counted"] == 1 and status["dlq"] == 2 and status["dlq_internal"] == 4
    assert status["catalogue_items"] == 1


def forged_candidates(boundary: int, item_id: str = "evil") -> bytes:
    """A candidates message a worker could have written: schema-valid, plausible counts and forecast."""
    return orjson.dumps({"b": boundary, "p": 0, "candidates": [
        {"item_id": item_id, "counts": [3, 4, 6, 9], "last_event_slot": boundary - 1, "forecast": 12.0,
         "text": "", "model": "velocity-baseline"}]})


def dlq_codes(replay) -> list[str]:
    return sorted(r["reason_code"] for r in replay.records("dlq", idle_exit_s=3))


def run_after_forgeries(replay, worker, events: list[dict], counter: str, rejected: int) -> tuple[dict, list[dict]]:
    """Produce the real log after the forged messages; (status, trend records) once the last step is out, every
    event was counted exactly once, no trend names the forged item, and `counter` reached `rejected`."""
    replay.produce(events)
    records = wait_for_step(replay, last_step_end(events))
    status = worker.wait_for(lambda s: s.get(counter, 0) >= rejected, 30, f"{rejected} forged messages rejected")
    assert status["counted"] == len(events) and status["dlq_internal"] == rejected
    assert all(r["item_id"] != "evil" for r in records)
    return status, records


def test_forged_well_formed_internal_messages_are_rejected_for_their_signature_and_change_nothing(
        make_replay, unique_topic, tmp_path):
    events = make_events(800, n_items=6, days=10, seed=24)
    replay = make_replay(unique_topic("forged"), tmp_path, top_k=6)
    worker = replay.start_worker()
    replay.wait_assigned()
    app, first_slot = replay.name, events[0]["ts"] // DAY_MS
    # plausible: a real item, a real first offset, a watermark inside the log; all pass decode_deltas
    forged_deltas = orjson.dumps({"src": 0, "wm": events[0]["ts"], "o": [0], "i": ["item-0"], "s": [first_slot],
                                  "c": [500]})
    forged_idle = orjson.dumps({"src": 1, "wm": events[-1]["ts"], "idle": True})
    produce_to(replay, f"{app}-deltas", [(p, None, forged_deltas) for p in range(4)] + [(0, None, forged_idle)])
    produce_to(replay, f"{app}-candidates", [(0, None, forged_candidates(first_slot + 3))])
    status, records = run_after_forgeries(replay, worker, events, "dlq_bad_signature", 6)
    assert status["dlq_bad_signature"] == 6
    assert_counts_match_recount(by_step(records), events)
    assert dlq_codes(replay) == ["bad_signature"] * 6


def test_a_signed_message_out_of_range_is_still_rejected_by_its_schema(make_replay, unique_topic, tmp_path):
    """Defence in depth: a key holder with a bug (or a stolen key) still cannot skip input with a huge offset."""
    events = make_events(800, n_items=6, days=10, seed=24)
    replay = make_replay(unique_topic("signedbad"), tmp_path, top_k=6)
    worker = replay.start_worker()
    replay.wait_assigned()
    app, keys = replay.name, load_internal_keys(replay.name, replay.data_dir, environ={})
    huge_offset = orjson.dumps({"src": 0, "wm": events[0]["ts"], "o": [10**18], "i": ["evil"],
                                "s": [events[0]["ts"] // DAY_MS], "c": [1]})
    produce_signed(replay, keys, f"{app}-deltas", [(p, huge_offset) for p in range(4)])
    produce_signed(replay, keys, f"{app}-candidates", [(0, b"[]")])
    status, _ = run_after_forgeries(replay, worker, events, "dlq_internal", 5)
    assert status["dlq_bad_signature"] == 0
    reasons = [r["reason"] for r in replay.records("dlq", idle_exit_s=3)]
    assert sum("offsets" in r for r in reasons) == 4 and len(reasons) == 5
    assert dlq_codes(replay) == ["bad_internal"] * 5


def test_a_signed_message_replayed_onto_another_topic_or_partition_is_rejected(make_replay, unique_topic, tmp_path):
    events = make_events(400, n_items=6, days=5, seed=25)
    replay = make_replay(unique_topic("replayed"), tmp_path, top_k=6)
    worker = replay.start_worker()
    replay.wait_assigned()
    replay.produce(events)
    wait_for_step(replay, last_step_end(events))
    app, keys = replay.name, load_internal_keys(replay.name, replay.data_dir, environ={})
    partition, value, headers = first_entries_message(replay, f"{app}-deltas")
    assert keys.check(f"{app}-deltas", partition, None, value, headers) is None   # a genuine, signed message
    produce_to(replay, f"{app}-deltas", [((partition + 1) % 4, None, value)], headers=headers)
    produce_to(replay, f"{app}-candidates", [(0, None, value)], headers=headers)
    # a well-formed candidates message signed for the deltas topic, sent to the candidates topic
    candidates = forged_candidates(events[-1]["ts"] // DAY_MS + 1)
    produce_to(replay, f"{app}-candidates", [(0, None, candidates)],
               headers=keys.headers(f"{app}-deltas", 0, None, candidates))
    status = worker.wait_for(lambda s: s.get("dlq_bad_signature", 0) >= 3, 30, "replayed messages rejected")
    assert status["counted"] == len(events) and status["dlq_internal"] == 3
    assert dlq_codes(replay) == ["bad_signature"] * 3
    assert all(r["item_id"] != "evil" for r in replay.records())
