"""Kafka credentials come from the environment or a private file, never need the command line, and are
never printed: not in reprs, not in warnings or errors, not in the worker's log."""

from __future__ import annotations

import argparse
import logging

import pytest

from infra.kafka_config import KafkaSettings
from streams.cli.common import add_kafka_args, settings_from_args
from streams.config import WorkerConfig

PASSWORD = "hunter2-Zq8"
FILE_PASSWORD = "file-secret-K3y"
CLI_SECRET = "cli-secret-9Xa"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_kafka_args(parser)
    return parser.parse_args(argv)


def write_config_file(path, mode: int = 0o600):
    path.write_text(f"# credentials for the cluster\n\nsecurity.protocol = SASL_SSL\nsasl.username=trail\n"
                    f"sasl.password={FILE_PASSWORD}\n")
    path.chmod(mode)
    return path


def test_credentials_come_from_trail_kafka_environment_variables(monkeypatch):
    monkeypatch.setenv("TRAIL_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("TRAIL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    extra = settings_from_args(parse([])).extra
    assert extra["sasl.password"] == PASSWORD and extra["security.protocol"] == "SASL_SSL"


def test_credentials_come_from_a_key_value_file_with_comments(tmp_path):
    extra = settings_from_args(parse(["--kafka-config-file", str(write_config_file(tmp_path / "kafka.conf"))])).extra
    assert extra == {"security.protocol": "SASL_SSL", "sasl.username": "trail", "sasl.password": FILE_PASSWORD}


def test_the_file_overrides_the_environment_and_the_command_line_overrides_both(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAIL_KAFKA_SASL_USERNAME", "from-env")
    monkeypatch.setenv("TRAIL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    path = write_config_file(tmp_path / "kafka.conf")
    extra = settings_from_args(parse(["--kafka-config-file", str(path),
                                      "--kafka-config", "security.protocol=SASL_PLAINTEXT"])).extra
    assert extra["sasl.mechanism"] == "SCRAM-SHA-512" and extra["sasl.username"] == "trail"
    assert extra["security.protocol"] == "SASL_PLAINTEXT"


def test_the_config_file_can_be_named_by_an_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAIL_KAFKA_CONFIG_FILE", str(write_config_file(tmp_path / "kafka.conf")))
    extra = settings_from_args(parse([])).extra
    assert extra["sasl.password"] == FILE_PASSWORD and "config.file" not in extra


def test_a_config_file_other_users_can_read_draws_a_warning(tmp_path, caplog):
    path = write_config_file(tmp_path / "kafka.conf", mode=0o644)
    with caplog.at_level(logging.WARNING, logger="trail.kafka_config"):
        settings_from_args(parse(["--kafka-config-file", str(path)]))
    assert "readable by other users" in caplog.text and "chmod 600" in caplog.text
    assert FILE_PASSWORD not in caplog.text


def test_a_private_config_file_draws_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trail.kafka_config"):
        settings_from_args(parse(["--kafka-config-file", str(write_config_file(tmp_path / "kafka.conf"))]))
    assert caplog.text == ""


def test_a_malformed_config_file_line_is_reported_without_its_value(tmp_path):
    path = tmp_path / "kafka.conf"
    path.write_text(f"sasl.username=trail\n{PASSWORD}\n")
    with pytest.raises(ValueError, match="line 2: expected KEY=VALUE") as raised:
        settings_from_args(parse(["--kafka-config-file", str(path)]))
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize("key", ["sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret",
                                 "sasl.jaas.config"])
def test_a_secret_on_the_command_line_draws_a_warning_naming_the_safer_ways(caplog, key):
    with caplog.at_level(logging.WARNING, logger="trail.kafka_config"):
        settings_from_args(parse(["--kafka-config", f"{key}={CLI_SECRET}"]))
    assert f"--kafka-config {key}=... puts a credential on the command line" in caplog.text
    assert "TRAIL_KAFKA_" + key.upper().replace(".", "_") in caplog.text and "--kafka-config-file" in caplog.text
    assert CLI_SECRET not in caplog.text


def test_a_setting_that_is_not_secret_draws_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="trail.kafka_config"):
        settings_from_args(parse(["--kafka-config", "security.protocol=SASL_SSL"]))
    assert caplog.text == ""


def test_reprs_of_the_settings_and_the_worker_config_never_show_credentials():
    settings = KafkaSettings("broker:9093", {"security.protocol": "SASL_PLAINTEXT", "sasl.username": "trail",
                                             "sasl.password": PASSWORD, "ssl.key.password": CLI_SECRET})
    shown = [repr(settings), str(settings), repr(WorkerConfig(kafka=settings)), str(settings.redacted()),
             repr(settings.faust_credentials())]
    for text in shown:
        assert PASSWORD not in text and CLI_SECRET not in text, text
    assert "'sasl.username': 'trail'" in repr(settings) and "'sasl.password': '***'" in repr(settings)
    assert settings.confluent()["sasl.password"] == PASSWORD   # still handed to the client itself


@pytest.mark.broker
@pytest.mark.timeout(180)
def test_the_worker_log_never_shows_credentials(make_replay, unique_topic, tmp_path, monkeypatch):
    """A worker given credentials through all three ways starts, runs and stops without printing any of them
    (PLAINTEXT to the embedded broker: the SASL settings travel through the configuration but are unused)."""
    monkeypatch.setenv("TRAIL_KAFKA_SASL_PASSWORD", PASSWORD)
    config_file = tmp_path / "kafka.conf"
    config_file.write_text(f"ssl.key.password={FILE_PASSWORD}\n")
    config_file.chmod(0o600)
    replay = make_replay(unique_topic("secrets"), tmp_path / "run")
    replay.extra_args = ["--kafka-config-file", str(config_file), "--kafka-config",
                         f"sasl.oauthbearer.client.secret={CLI_SECRET}", "--log-level", "debug"]
    worker = replay.start_worker()
    replay.wait_assigned()
    replay.stop()
    log_text = worker.log_tail(10_000_000)
    assert "puts a credential on the command line" in log_text     # the one given on the command line
    for secret in (PASSWORD, FILE_PASSWORD, CLI_SECRET):
        assert secret not in log_text
