"""Reproducible training: a fixed number of steps decides the model; the time cap only stops a run, loudly."""

from __future__ import annotations

import pytest

from models.train import lr_factor, train, training_progress
from models.train_config import TrainConfig

# seconds on 2 cores: a few tiny steps on small batches, no validation
TINY = {"batch_size": 8, "explain_rows": 2, "contrastive_rows": 2, "val_days": 0}


def weights_sha256(card: dict) -> str:
    return card["weights"]["model.safetensors"]["sha256"]


def test_same_seed_and_steps_give_the_same_weights(tmp_path):
    first = train(TrainConfig.for_base("tiny", steps=3, seed=0, **TINY), tmp_path / "a")
    second = train(TrainConfig.for_base("tiny", steps=3, seed=0, **TINY), tmp_path / "b")
    assert first["hyperparameters"]["steps_done"] == 3 and not first["hyperparameters"]["stopped_early"]
    assert weights_sha256(first) == weights_sha256(second)


def test_another_seed_gives_other_weights(tmp_path):
    first = train(TrainConfig.for_base("tiny", steps=1, seed=0, **TINY), tmp_path / "a")
    other = train(TrainConfig.for_base("tiny", steps=1, seed=1, **TINY), tmp_path / "b")
    assert weights_sha256(first) != weights_sha256(other)


def test_the_time_cap_stops_a_run_short_with_a_warning(tmp_path):
    with pytest.warns(RuntimeWarning, match="NOT the reproducible 3-step model"):
        card = train(TrainConfig.for_base("tiny", steps=3, max_minutes=1e-9, **TINY), tmp_path / "capped")
    assert card["hyperparameters"]["stopped_early"]
    assert card["hyperparameters"]["steps_done"] < 3


def test_the_learning_rate_schedule_follows_the_steps_only():
    assert training_progress(0, 700) == 0.0 and training_progress(350, 700) == 0.5
    assert lr_factor(training_progress(699, 700), 0.05) == pytest.approx(0.1, abs=1e-3)


def test_default_tiny_run_is_a_fixed_step_count_under_a_looser_cap():
    cfg = TrainConfig.for_base("tiny")
    assert cfg.default_steps() == 700
    # 0.32 s per step measured on 2 cores: the default run (~4 minutes) stays well inside the cap
    assert cfg.default_steps() * 0.32 < cfg.max_minutes * 60 / 1.5


def test_saved_weights_do_not_depend_on_the_metadata_order(tmp_path):
    # safetensors writes metadata in a per-process hash order; the saved file sorts it
    import torch
    from safetensors.torch import load_file, save_file

    from models.trail_scorer import sort_safetensors_metadata

    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, 2)}
    paths = []
    for i, metadata in enumerate(({"x": "1", "y": "2", "z": "3"}, {"z": "3", "x": "1", "y": "2"})):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file(tensors, str(paths[-1]), metadata=metadata)
        sort_safetensors_metadata(paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert torch.equal(load_file(str(paths[0]))["a"], tensors["a"])


def test_tiny_draws_one_boundary_per_batch_with_the_share_loss_by_default():
    # docs/trail-model.md "Forecast levers (issue 13)": chosen on validation; smollm2 was not measured with it
    assert TrainConfig.for_base("tiny").share_weight == 0.5
    assert TrainConfig.for_base("tiny", share_weight=0.0).share_weight == 0.0
    assert TrainConfig.for_base("smollm2").share_weight == 0.0


def test_top_rows_are_each_boundarys_highest_next_counts():
    import numpy as np

    from models.train_examples import Examples, top_rows

    targets = np.array([5.0, 1.0, 9.0, 0.0, 3.0, 3.0, 7.0])
    boundary = np.array([1, 1, 1, 1, 2, 2, 2])
    data = Examples(np.zeros((7, 1), np.float32), np.zeros((7, 1)), np.zeros(7, np.int64), targets, boundary, [""])
    assert top_rows(data, 2).tolist() == [0, 2, 4, 6]   # boundary 1: 9 and 5; boundary 2: 7 and the first 3


def test_explanation_rows_take_top_rows_after_the_contrastive_rows_only():
    import numpy as np

    from models.train_step import explanation_rows

    rows = np.arange(100, 132)
    pool = np.arange(10)
    plain = TrainConfig.for_base("tiny", explain_top_share=0.0)   # batch 32, explain 32, contrastive 8
    assert explanation_rows(rows, plain, np.random.default_rng(0), pool).tolist() == rows.tolist()
    mixed = TrainConfig.for_base("tiny", explain_top_share=0.25)
    out = explanation_rows(rows, mixed, np.random.default_rng(0), pool)
    assert out[:24].tolist() == rows[:24].tolist()   # the contrastive rows (first 8) are the batch's own
    assert set(out[24:].tolist()) <= set(pool.tolist()) and len(set(out[24:].tolist())) == 8
