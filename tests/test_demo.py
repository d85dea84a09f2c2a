"""`trail demo --json`: the whole product on one machine (its own embedded broker, a worker serving a
bundle, the ml-100k replay) prints the documented summary and writes records that validate."""

from __future__ import annotations

import json

import pytest

from schemas import TREND_V1, validator

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]


def test_headless_demo_prints_its_summary_and_writes_valid_records(tiny_trail_bundle, tmp_path, capsys):
    from streams.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--bundle", str(tiny_trail_bundle), "--duration", "25", "--replay-s", "60",
                 "--json", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("records", "steps", "model", "faithfulness", "published_faithfulness", "events_per_s"):
        assert key in summary, key
    assert summary["records"] > 0 and summary["steps"] > 0 and summary["events_per_s"] > 0
    assert summary["model"] == tiny_trail_bundle.name
    assert summary["published_faithfulness"] == 1.0
    records = [json.loads(line) for line in (out / "trends.jsonl").read_text().splitlines()]
    assert len(records) == summary["records"]
    check = validator(TREND_V1)
    for record in records:
        check(record)
    assert (out / "REPORT.md").exists() and (out / "summary.json").exists()
