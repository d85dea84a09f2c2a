"""`trail bench recovery`: one tiny history through a real worker on the session broker. Checks the JSON
shape and that warm and cold restarts recovered exactly the counts; timings are reported, never asserted."""

from __future__ import annotations

import json

ROW_KEYS = {"history_events", "changelog_records", "changelog_mb", "disk_mb", "warm_restart_s", "cold_restart_s",
            "cold_over_warm"}


def test_bench_recovery_prints_the_table_and_recovers_exact_counts(broker, capsys):
    from streams.cli import main

    assert main(["bench", "recovery", "--history", "2000", "--chunk-events", "500", "--bootstrap", broker,
                 "--timeout-s", "90", "--json"]) == 0
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
    # each of the 4 chunks was counted by at least one write group (its records and a group end)
    assert row["chunks"] == 4 and row["changelog_records"] > row["table_keys"]
    assert row["changelog_mb"] > 0 and row["disk_mb"] > 0
    for phases in (row["warm_phases"], row["cold_phases"]):
        assert 0 < phases["up_s"] <= phases["joined_s"] <= phases["ready_s"]
    assert row["warm_restart_s"] == row["warm_phases"]["ready_s"]
    assert row["cold_restart_s"] == row["cold_phases"]["ready_s"]
