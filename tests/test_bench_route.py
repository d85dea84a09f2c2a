"""`trail bench route`: per-event CPU of the envelope path's calls, with the ratio to orjson.loads."""

from __future__ import annotations

import orjson

from streams.bench_route import grouped_envelopes
from streams.cli import main
from streams.partitioning import partition_for


def test_bench_route_prints_every_call_and_its_ratio(capsys):
    assert main(["bench", "route", "--events", "2000", "--repeat", "1", "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    calls = {"scan_plain_envelope", "count_by_partition", "decode_message_full_check", "route_new_router",
             "route_warm_router", "decode_deltas", "apply_messages"}
    assert set(out["us_per_event"]) == calls | {"orjson_loads"}
    assert set(out["ratio_to_orjson_loads"]) == calls
    assert all(value > 0 for value in out["us_per_event"].values())
    assert out["messages"] >= 20 and 0 < out["deltas_entries"] <= 2000
    assert out["command"].startswith("trail bench route --events 2000")


def test_envelopes_hold_items_of_one_partition_each_and_every_event_once():
    events = [{"item_id": f"i{k % 37}", "ts": k} for k in range(1000)]
    messages = grouped_envelopes(events, 50, 4)
    decoded = [(source, orjson.loads(value)) for source, _, value in messages]
    assert all({partition_for(e["item_id"].encode(), 4) for e in envelope} == {source} for source, envelope in decoded)
    assert sorted(e["ts"] for _, envelope in decoded for e in envelope) == list(range(1000))
    assert [offset for _, offset, _ in messages] == list(range(len(messages)))


def test_bench_route_refuses_a_zero(capsys):
    assert main(["bench", "route", "--events", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err
