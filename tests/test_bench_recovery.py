"""`trail bench recovery`: one tiny history through a real worker on the session broker. Checks the JSON
shape and that warm and cold restarts recovered exactly the counts; timings are reported, never asserted."""

from __future__ import annotations

import json

ROW_KEYS = {"history_events", "changelog_records", "changelog_mb", "disk_mb", "warm_restart_s", "cold_restart_s",
            "cold_over_warm"}


def test_bench_recovery_prints_the_table_and_recovers_exact_counts(broker, capsys):
    from streams.cli import main

    assert main(["bench", "recovery", "--history", "2000", "--bootstrap", broker, "--timeout-s", "90", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "recovery" and result["exact"] is True
    assert result["command"].startswith("trail bench recovery --history 2000")
    assert {"cpu", "cores", "load_avg", "load_avg_after"} <= set(result["machine"])
    assert {"unbounded", "bounded"} == set(result["growth"])
    [row] = result["rows"]
    assert ROW_KEYS <= set(row)
    assert row["history_events"] == row["counted"] == 2000
    assert row["ring_events"] == {"first_run": 2000, "warm": 2000, "cold": 2000}
    assert row["warm_counts_equal"] and row["cold_counts_equal"]
    # every input message wrote at least one write group (its records and a group end) to the changelog
    assert row["changelog_records"] > 2 * row["input_messages"] and row["changelog_mb"] > 0 and row["disk_mb"] > 0
    assert row["warm_restart_s"] > 0 and row["cold_restart_s"] > 0
