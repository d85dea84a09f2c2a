"""`trail broker` stays on this machine unless told otherwise: a non-loopback --host is refused without
--i-know-its-open, warned about with it, and the S3 emulator never leaves 127.0.0.1. No broker runs here."""

from __future__ import annotations

import pytest

from infra.broker import EmbeddedBroker, is_loopback_host
from streams.cli import main


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_are_recognised(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.5", "broker.example.com", ""])
def test_other_hosts_count_as_reachable_from_elsewhere(host):
    assert not is_loopback_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_a_non_loopback_host_is_refused_with_exit_code_2(host, tmp_path, capsys):
    assert main(["broker", "--host", host, "--pid-file", str(tmp_path / "broker.pid")]) == 2
    err = capsys.readouterr().err
    assert f"refusing --host {host}: it is not a loopback address" in err and "--i-know-its-open" in err
    assert not (tmp_path / "broker.pid").exists()


def test_i_know_its_open_lets_it_through_with_a_warning(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRAIL_TANSU_BIN", str(tmp_path / "no-tansu"))   # stop right after the exposure check
    code = main(["broker", "--host", "0.0.0.0", "--i-know-its-open", "--port", "0",
                 "--pid-file", str(tmp_path / "broker.pid")])
    err = capsys.readouterr().err
    assert "WARNING: listening on 0.0.0.0" in err and "no authentication" in err
    assert code == 1 and "tansu binary not found" in err   # past the refusal, failing only for the missing binary


def test_the_s3_emulator_listens_on_loopback_whatever_the_broker_host(tmp_path):
    embedded = EmbeddedBroker(9092, host="0.0.0.0", storage="s3", data_dir=tmp_path / "data", log_dir=tmp_path)
    assert embedded.make_s3_emulator().host == "127.0.0.1"
