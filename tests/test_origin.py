"""streams.origin: the local state is kept, moved aside or refused depending on where it came from."""

from __future__ import annotations

import logging

import pytest

from streams.origin import OriginMismatch, StateOrigin, reconcile

GEOMETRY = {"slot_s": 3600, "bucket_s": 86400, "n_buckets": 4, "partitions": 4}


def origin(cluster="c1", clicks="t-clicks-1", changelog="t-log-1", geometry=None) -> StateOrigin:
    return StateOrigin(cluster, clicks, {"app-slot-counts-changelog": changelog}, geometry or GEOMETRY)


def plant_state(worker_dir) -> None:
    (worker_dir / "v1" / "tables").mkdir(parents=True)
    (worker_dir / "v1" / "tables" / "marker").write_text("old state")


def test_the_same_origin_keeps_the_state(tmp_path):
    reconcile(tmp_path, origin())
    plant_state(tmp_path)
    result = reconcile(tmp_path, origin())
    assert result.kept and not result.input_recreated and (tmp_path / "v1" / "tables" / "marker").exists()


def test_new_changelog_topics_move_the_state_aside_with_one_log_line(tmp_path, caplog):
    reconcile(tmp_path, origin())
    plant_state(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trail.worker"):
        result = reconcile(tmp_path, origin(changelog="t-log-2"))
    assert not result.kept and not (tmp_path / "v1").exists()
    assert [p.name.startswith("v1.stale-") for p in tmp_path.iterdir() if p.is_dir()] == [True]
    assert sum("starting clean" in r.message for r in caplog.records) == 1


def test_another_cluster_moves_the_state_aside(tmp_path):
    reconcile(tmp_path, origin())
    plant_state(tmp_path)
    assert not reconcile(tmp_path, origin(cluster="c2")).kept


def test_state_of_unknown_origin_is_moved_aside(tmp_path):
    plant_state(tmp_path)
    assert not reconcile(tmp_path, origin()).kept


def test_a_re_created_input_topic_keeps_the_state_and_asks_for_a_rewind(tmp_path):
    reconcile(tmp_path, origin())
    plant_state(tmp_path)
    result = reconcile(tmp_path, origin(clicks="t-clicks-2"))
    assert result.kept and result.input_recreated
    assert not reconcile(tmp_path, origin(clicks="t-clicks-2")).input_recreated   # recorded: once only


def test_another_window_geometry_is_refused_and_the_state_left_alone(tmp_path):
    reconcile(tmp_path, origin())
    plant_state(tmp_path)
    with pytest.raises(OriginMismatch, match="window"):
        reconcile(tmp_path, origin(geometry={**GEOMETRY, "slot_s": 60}))
    assert (tmp_path / "v1" / "tables" / "marker").exists()
