"""infra.files: atomic writes under a private temporary name that never follow a planted symlink."""

from __future__ import annotations

import os
import stat

from infra.files import write_atomic_private


def test_writes_the_bytes_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "status.json"
    write_atomic_private(target, b'{"a": 1}')
    write_atomic_private(target, b'{"a": 2}')
    assert target.read_bytes() == b'{"a": 2}'
    assert os.listdir(tmp_path) == ["status.json"]


def test_the_new_file_is_private_to_its_owner(tmp_path):
    target = tmp_path / "status.json"
    write_atomic_private(target, b"x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_symlink_planted_at_the_old_fixed_temporary_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "status.tmp").symlink_to(victim)   # where the old writer put its temporary file
    target = tmp_path / "status.json"
    write_atomic_private(target, b"status")
    assert victim.read_bytes() == b"precious"
    assert target.read_bytes() == b"status" and not target.is_symlink()
    assert (tmp_path / "status.tmp").is_symlink()


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "status.json"
    target.symlink_to(victim)
    write_atomic_private(target, b"status")
    assert victim.read_bytes() == b"precious"
    assert target.read_bytes() == b"status" and not target.is_symlink()
