"""The merge step's pure parts (streams/merge.py) and `trail tail --dedupe`: what makes output de-duplicable."""

from __future__ import annotations

from streams.merge import CandidatesMessage, MergeProgress, record_id
from streams.trend_reader import first_sightings

WINDOW = {"start": 0, "end": 86_400_000, "slot_s": 86_400, "bucket_s": 604_800}
MODEL = {"name": "trail-tiny", "version": "3", "sha256": "ab" * 32}


def test_a_record_id_depends_on_the_step_the_rank_and_the_model_only():
    same = record_id(dict(WINDOW), 1, dict(MODEL))
    assert same == record_id(WINDOW, 1, MODEL) and len(same) == 32
    assert len({same, record_id(WINDOW, 2, MODEL), record_id({**WINDOW, "end": 2 * 86_400_000}, 1, MODEL),
                record_id(WINDOW, 1, {**MODEL, "sha256": "cd" * 32})}) == 4


def test_dedupe_shows_each_record_id_once_and_keeps_records_without_one():
    records = [{"record_id": "a", "n": 1}, {"record_id": "b", "n": 2}, {"record_id": "a", "n": 3}, {"n": 4}, {"n": 5}]
    assert [r["n"] for r in first_sightings(records)] == [1, 2, 4, 5]


def test_dedupe_memory_is_bounded_to_the_newest_ids():
    records = [{"record_id": str(k)} for k in (1, 2, 3, 1)]
    assert [r["record_id"] for r in first_sightings(records, capacity=2)] == ["1", "2", "3", "1"]


def test_a_step_is_complete_once_every_partition_reported_it_and_re_deliveries_are_not_new():
    progress = MergeProgress()
    assert progress.complete_upto(2) is None
    progress.reported.update({"0": 7, "1": 5})
    assert progress.complete_upto(2) == 5
    progress.emitted_upto = 5
    assert not progress.is_new(CandidatesMessage(5, 0, []))
    assert not progress.is_new(CandidatesMessage(6, 0, []))      # partition 0 reported up to 7 already
    assert progress.is_new(CandidatesMessage(6, 1, []))
    assert MergeProgress.decode(progress.encode()) == progress


def test_candidates_messages_round_trip():
    message = CandidatesMessage(9, 1, [{"item_id": "a", "counts": [1, 0, 2, 3], "last_event_slot": 8,
                                        "forecast": 2.5, "text": "A (1995) | Drama", "model": "velocity-baseline"}])
    assert CandidatesMessage.decode(message.encode(), n_partitions=4, top_k=10, n_buckets=4) == message
