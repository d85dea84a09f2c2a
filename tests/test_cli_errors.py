"""One error policy: what a user can act on ends as one `trail COMMAND: error: ...` line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from infra.procs import free_port


def trail(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [["produce", "{events}"], ["tail"], ["worker", "--data-dir", "{tmp}"]])
def test_no_broker_is_one_line_saying_how_to_start_one(command, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"item_id": "a", "ts": 1700000000000}\n')
    args = [a.format(events=events, tmp=tmp_path / "data") for a in command]
    result = trail(*args, "--bootstrap", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"trail {command[0]}: error: no Kafka broker answers")
    assert "trail broker --detach" in lines[0]


def test_a_missing_file_is_reported_before_the_broker_is_asked(tmp_path):
    missing = tmp_path / "missing.jsonl"
    result = trail("produce", str(missing), "--bootstrap", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2 and result.stderr.strip() == f"trail produce: error: no such file: {missing}"


def test_a_subcommand_that_fails_to_import_is_listed_as_unavailable_and_exits_2(monkeypatch, capsys):
    from streams.cli import build_parser, main

    monkeypatch.setitem(sys.modules, "streams.cli.chaos", None)   # importing it now raises ImportError
    help_text = build_parser().format_help()
    assert "chaos" in help_text and "UNAVAILABLE: streams.cli.chaos failed to import" in help_text
    assert main(["chaos", "--events", "10"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trail chaos: error: streams.cli.chaos failed to import")
