"""HMAC tags of internal messages and the key an app's workers share (infra.internal_auth), without Kafka."""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat

import pytest

from infra.internal_auth import (
    HEADER,
    KEY_ENV,
    KEY_FILE_ENV,
    InternalKeyError,
    InternalKeys,
    default_key_path,
    load_internal_keys,
    parse_keys,
)

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
VALUE = b'{"src": 1, "wm": 1700000000000, "o": [5], "i": ["a"], "s": [19675], "c": [2]}'


def signed(keys: InternalKeys, topic: str = "app-deltas", partition: int = 1, key: bytes | None = None,
           value: bytes = VALUE) -> list[tuple[str, bytes]]:
    return keys.headers(topic, partition, key, value)


def test_a_message_signed_with_the_key_verifies():
    keys = InternalKeys(KEY)
    assert keys.check("app-deltas", 1, None, VALUE, signed(keys)) is None


@pytest.mark.parametrize("change", ["value", "key", "topic", "partition"])
def test_any_change_to_the_signed_message_or_its_destination_fails(change):
    keys = InternalKeys(KEY)
    headers = signed(keys)
    topic, partition, key, value = "app-deltas", 1, None, VALUE
    if change == "value":
        value = VALUE.replace(b"[2]", b"[3]")
    elif change == "key":
        key = b""
    elif change == "topic":
        topic = "app-candidates"
    else:
        partition = 2
    assert "does not match" in keys.check(topic, partition, key, value, headers)


def test_the_framing_is_unambiguous_between_topic_and_value():
    keys = InternalKeys(KEY)
    assert keys.tag("ab", 0, None, b"c") != keys.tag("a", 0, None, b"bc")
    assert keys.tag("a", 0, None, b"") != keys.tag("a", 0, None, None)


def test_a_missing_or_doubled_tag_is_refused_with_a_reason():
    keys = InternalKeys(KEY)
    assert "no trail-hmac header" in keys.check("app-deltas", 1, None, VALUE, None)
    assert "no trail-hmac header" in keys.check("app-deltas", 1, None, VALUE, [("other", b"x")])
    assert "2 trail-hmac headers" in keys.check("app-deltas", 1, None, VALUE, signed(keys) * 2)


def test_a_message_signed_with_another_key_is_refused():
    assert InternalKeys(OTHER).check("app-deltas", 1, None, VALUE, signed(InternalKeys(KEY))) is not None


def test_during_a_rotation_the_previous_key_still_verifies_but_the_new_one_signs():
    old, rotated = InternalKeys(KEY), InternalKeys(OTHER, (KEY,))
    assert rotated.check("app-deltas", 1, None, VALUE, signed(old)) is None
    assert rotated.check("app-deltas", 1, None, VALUE, signed(rotated)) is None
    assert old.check("app-deltas", 1, None, VALUE, signed(rotated)) is not None
    assert signed(rotated)[0] == (HEADER, InternalKeys(OTHER).tag("app-deltas", 1, None, VALUE))


def test_keys_never_appear_in_reprs_or_parse_errors():
    keys = InternalKeys(KEY, (OTHER,))
    assert KEY.hex() not in repr(keys) and KEY.hex() not in str(keys) and OTHER.hex() not in repr(keys)
    with pytest.raises(InternalKeyError) as error:
        parse_keys(KEY.hex() + "\n" + "zz" + KEY.hex(), "test")
    assert KEY.hex() not in str(error.value) and "line 2" in str(error.value)


def test_short_or_empty_keys_are_refused():
    with pytest.raises(InternalKeyError, match="too short"):
        parse_keys("abcd", "test")
    with pytest.raises(InternalKeyError, match="no key"):
        parse_keys("# only a comment\n", "test")


def test_key_text_takes_lines_commas_and_comments_and_the_first_key_signs():
    keys = parse_keys(f"# rotated 2026-12-01\n{OTHER.hex()}  # new\n{KEY.hex()},{KEY.hex()}\n", "test")
    assert keys.signing == OTHER and keys.accepted == (KEY, KEY)


def test_the_default_key_file_is_created_private_once_and_shared_by_every_worker(tmp_path):
    first = load_internal_keys("app", tmp_path, environ={})
    second = load_internal_keys("app", tmp_path, environ={})
    path = default_key_path(tmp_path, "app")
    assert path == tmp_path / "keys" / "app.key"
    assert first.signing == second.signing and len(first.signing) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_internal_keys("other-app", tmp_path, environ={}).signing != first.signing
    assert sorted(p.name for p in path.parent.iterdir()) == ["app.key", "other-app.key"]


def _load_signing_key(data_dir: str) -> bytes:
    return load_internal_keys("race", data_dir, environ={}).signing


def test_workers_starting_together_agree_on_one_default_key(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        keys = pool.map(_load_signing_key, [str(tmp_path)] * 16)
    assert len(set(keys)) == 1
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["race.key"]   # no temporary file left behind


def test_the_creation_message_names_the_file_but_never_the_key(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        keys = load_internal_keys("app", tmp_path, environ={})
    assert "keys/app.key" in caplog.text and keys.signing.hex() not in caplog.text


def test_a_key_file_or_the_environment_beats_the_default_file(tmp_path):
    key_file = tmp_path / "given.key"
    key_file.write_text(KEY.hex() + "\n")
    key_file.chmod(0o600)
    assert load_internal_keys("app", tmp_path, key_file, environ={KEY_ENV: OTHER.hex()}).signing == KEY
    assert load_internal_keys("app", tmp_path, environ={KEY_FILE_ENV: str(key_file), KEY_ENV: OTHER.hex()}
                              ).signing == KEY
    assert load_internal_keys("app", tmp_path, environ={KEY_ENV: OTHER.hex()}).signing == OTHER
    assert not default_key_path(tmp_path, "app").exists()


def test_a_key_file_others_can_read_draws_a_warning_without_the_key(tmp_path, caplog):
    key_file = tmp_path / "given.key"
    key_file.write_text(KEY.hex())
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_internal_keys("app", tmp_path, key_file, environ={})
    assert "chmod 600" in caplog.text and KEY.hex() not in caplog.text


def test_a_missing_key_file_is_an_error_that_says_what_to_do(tmp_path):
    with pytest.raises(InternalKeyError, match="cannot open"):
        load_internal_keys("app", tmp_path, tmp_path / "absent.key", environ={})


def test_a_symlink_planted_at_the_default_key_path_is_not_followed(tmp_path):
    planted = tmp_path / "planted.key"
    planted.write_text(KEY.hex())
    (tmp_path / "keys").mkdir(mode=0o700)
    os.symlink(planted, default_key_path(tmp_path, "app"))
    with pytest.raises(InternalKeyError, match="cannot open"):
        load_internal_keys("app", tmp_path, environ={})


def test_an_app_id_that_is_not_a_file_name_is_refused(tmp_path):
    with pytest.raises(InternalKeyError, match="app id"):
        default_key_path(tmp_path, "../escape")


@pytest.mark.broker
def test_the_worker_exits_with_code_2_before_joining_when_its_key_file_is_unusable(broker, tmp_path, capsys,
                                                                                   monkeypatch):
    from streams.cli import main

    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    bad = tmp_path / "bad.key"
    bad.write_text("not-hex-" + KEY.hex())
    bad.chmod(0o600)
    for key_file, message in ((tmp_path / "absent.key", "cannot open"), (bad, "not hex")):
        code = main(["worker", "--internal-key-file", str(key_file), "--bootstrap", broker,
                     "--data-dir", str(tmp_path / "data")])
        err = capsys.readouterr().err
        assert code == 2 and "trail worker: error:" in err and message in err and KEY.hex() not in err
