"""`trail bench peer`: one run prints TRAIL's, Quix Streams' and the raw ceiling's rates, their ratios, and
counts checked against a straight recount (issue 17)."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from streams.bench_peer import FLUSH_PREFIX, bench_events, count_mismatches, quix_available, recount
from streams.cli import main
from streams.partitioning import partition_for

pytestmark = pytest.mark.broker

RUNS = ("raw_single", "raw_envelope", "quix", "trail_single", "trail_envelope")


def test_every_partition_gets_one_flush_event_after_the_last_event():
    events = bench_events(500, 50, seed=3, partitions=4)
    flush = [e for e in events if e["item_id"].startswith(FLUSH_PREFIX)]
    assert sorted(partition_for(e["item_id"].encode(), 4) for e in flush) == [0, 1, 2, 3]
    assert min(e["ts"] for e in flush) > max(e["ts"] for e in events[:500])


def test_a_count_off_by_one_is_a_mismatch_and_flush_windows_are_ignored():
    truth = recount([{"item_id": "a", "ts": 0}, {"item_id": "a", "ts": 1}, {"item_id": f"{FLUSH_PREFIX}0", "ts": 5}])
    assert count_mismatches(truth, Counter({("a", 0): 2})) == 0
    assert count_mismatches(truth, Counter({("a", 0): 1})) == 1
    assert count_mismatches(truth, Counter({("a", 0): 2, ("b", 0): 1})) == 1


def test_bench_peer_prints_rates_ratios_machine_and_exact_counts(broker, capsys):
    skip = quix_available()
    if skip:
        pytest.skip(skip)
    assert main(["bench", "peer", "--events", "3000", "--items", "300", "--bootstrap", broker, "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["bench"] == "peer" and result["events"] == 3004 and result["counts_exact"] is True
    (only_round,) = result["rounds"]
    for run in RUNS:
        assert only_round[run]["events_per_s"] > 0, run
    for run in ("quix", "trail_single", "trail_envelope"):
        assert only_round[run]["counts_exact"] is True and only_round[run]["mismatched_keys"] == 0, run
    assert only_round["quix"]["counted"] == 3000   # every window of the real events closed and was checked
    assert only_round["trail_single"]["counted"] == only_round["trail_envelope"]["counted"] == 3004
    for ratio in ("trail_single/quix", "trail_envelope/raw_envelope", "quix/raw_single"):
        assert result["ratios_median"][ratio] > 0, ratio
    assert {"cpu_model", "logical_cpus", "load_avg_1_5_15"} <= set(result["machine"])
    assert result["command"].startswith("trail bench peer --events 3000")
