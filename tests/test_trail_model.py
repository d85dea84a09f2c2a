"""TRAIL model (arXiv 2602.04225): the checker, the contrastive loss, a seconds-long tiny training, the scorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.faithfulness import check_explanation
from models.features import FeatureBatch
from models.rationales import N_TEMPLATES, evidence_text, rationale, wrong_forecasts
from models.scoring import template_explanation
from models.windows import WindowSpec

SPEC = WindowSpec(slot_s=86_400, bucket_s=7 * 86_400, n_buckets=8)
WEEK_S = SPEC.bucket_s
SIGNALS = {"last_count": 12.0, "prev_count": 8.0, "velocity": 4.0, "acceleration": 3.0, "growth_pct": 50.0,
           "mean_count": 9.375, "recency_slots": 1.0}


def tiny_batch() -> FeatureBatch:
    counts = np.array([[0, 1, 2, 3, 5, 8, 8, 12], [9, 9, 8, 7, 6, 5, 4, 3], [0, 0, 0, 0, 0, 0, 0, 1]])
    return FeatureBatch(item_ids=["1", "2", "3"], bucket_counts=counts, last_event_slot=np.array([99, 98, 97]),
                        boundary_slot=100, spec=SPEC,
                        texts=["Toy Story (1995) | Animation, Comedy", "Heat (1995) | Action", ""])


# --- the checker -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("forecast", [15.3, 12.2, 6.1])
def test_every_rationale_template_passes_the_checker(forecast: float) -> None:
    for template in range(N_TEMPLATES):
        text = rationale(SIGNALS, forecast, WEEK_S, template)
        assert check_explanation(text, SIGNALS, forecast, SIGNALS["last_count"]) == (True, True), text


def test_checker_accepts_the_baseline_template_explanation() -> None:
    text = template_explanation(SIGNALS, 15.3, WEEK_S)
    assert check_explanation(text, SIGNALS, 15.3, 12.0) == (True, True)


def test_checker_catches_a_wrong_number() -> None:
    text = "Rising: about 15.3 interactions expected next week. It had 31 last week, up from 8."
    assert check_explanation(text, SIGNALS, 15.3, 12.0) == (False, True)


def test_checker_catches_a_wrong_percent_sign() -> None:
    text = "Rising: about 15.3 interactions expected next week, -50.0% on the week before."
    assert check_explanation(text, SIGNALS, 15.3, 12.0)[0] is False


def test_checker_catches_a_wrong_direction() -> None:
    text = "Falling: about 15.3 interactions expected next week. It had 12 last week, up from 8."
    assert check_explanation(text, SIGNALS, 15.3, 12.0) == (False, False)


def test_checker_needs_a_direction_word() -> None:
    assert check_explanation("About 15.3 interactions expected next week.", SIGNALS, 15.3, 12.0) == (False, False)


def test_hard_negatives_flip_the_direction_and_change_the_magnitude() -> None:
    flipped, wrong = wrong_forecasts(SIGNALS, 15.3)
    assert check_explanation(rationale(SIGNALS, flipped, WEEK_S, 0), SIGNALS, 15.3, 12.0)[1] is False
    assert check_explanation(rationale(SIGNALS, wrong, WEEK_S, 0), SIGNALS, 15.3, 12.0)[0] is False


def test_evidence_line_holds_the_forecast_and_its_direction() -> None:
    line = evidence_text(SIGNALS, 15.3, WEEK_S)
    assert "15.3, rising" in line and "+50.0%" in line


# --- losses --------------------------------------------------------------------------------------------------


def test_contrastive_loss_prefers_the_true_pair() -> None:
    from models.trail_losses import info_nce

    torch.manual_seed(0)
    reps = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    hard = torch.nn.functional.normalize(torch.randn(6, 2, 16), dim=-1)
    true_pairs = info_nce(reps, reps, hard, temperature=0.1)
    swapped = info_nce(reps, reps.roll(1, dims=0), hard, temperature=0.1)
    hard_as_positive = info_nce(reps, hard[:, 0], torch.stack([reps, hard[:, 1]], dim=1), temperature=0.1)
    assert true_pairs < swapped and true_pairs < hard_as_positive


def test_forecast_loss_is_l1_on_log1p_counts() -> None:
    from models.trail_losses import forecast_loss

    loss = forecast_loss(torch.log1p(torch.tensor([3.0, 0.0])), torch.tensor([3.0, np.e - 1]))
    assert loss.item() == pytest.approx(0.5, abs=1e-5)


# --- the model ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from models.trail import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny_model():
    from models.trail import TrailConfig, build_model

    return build_model(TrailConfig(base="tiny", max_new_tokens=12), seed=0)


def test_one_step_forward_matches_the_cached_decode(tiny_model) -> None:
    """The export "step": a prompt pass with the numeric prefix, then a cached step without it, equals one pass."""
    from transformers import DynamicCache

    from models.trail import numeric_features, prompt_inputs

    batch = tiny_batch()
    features = numeric_features(batch.bucket_counts, batch.signals, SPEC.window_slots)
    rows = [[1, 300, 301, 302], [1, 400, 401], [1, 500]]
    ids, mask, pos, numeric = prompt_inputs(rows, features, tiny_model.config.n_prefix)
    full_ids, full_mask, full_pos, _ = prompt_inputs([r + [7] for r in rows], features, tiny_model.config.n_prefix)
    with torch.no_grad():
        full_logits, _ = tiny_model(full_ids, full_mask, full_pos, numeric)
        logits, cache = tiny_model(ids, mask, pos, numeric, DynamicCache(config=tiny_model.lm.config))
        step_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        step_logits, _ = tiny_model(torch.full((3, 1), 7), step_mask, pos[:, -1:] + 1, numeric[:, :0], cache)
    assert logits.shape == (3, tiny_model.config.n_prefix + ids.shape[1], tiny_model.lm.config.vocab_size)
    torch.testing.assert_close(step_logits[:, -1], full_logits[:, -1], atol=1e-4, rtol=1e-4)


def test_text_vector_depends_on_the_text_alone_and_padding_does_not_change_it(tiny_model) -> None:
    """The cacheable part of the forecast: the same text gives the same vector, alone or left-padded in a batch."""
    from models.trail import left_pad

    with torch.no_grad():
        alone = tiny_model.read_text(*left_pad([[1, 300, 301]]))
        padded = tiny_model.read_text(*left_pad([[1, 300, 301], [1, 400, 401, 402, 403, 404]]))
        other = tiny_model.read_text(*left_pad([[1, 300, 302]]))
        forecast, h = tiny_model.forecast(torch.zeros(2, tiny_model.config.n_item_features), padded)
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone, other)
    assert forecast.shape == (2,) and h.shape == (2, tiny_model.config.head_hidden)


def test_forecast_head_and_generator_run(tiny_model, tokenizer) -> None:
    from models.trail_scorer import TrailScorer

    scorer = TrailScorer(tiny_model, tokenizer, name="trail-test", version="0", sha256="")
    batch = tiny_batch()
    forecast = scorer.forecast(batch)
    assert forecast.shape == (3,) and np.all(forecast >= 0) and np.all(np.isfinite(forecast))
    texts = scorer.explain(batch, forecast, np.array([2, 0]))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert all(len(tokenizer.encode(t, add_special_tokens=False)) <= 2 * tiny_model.config.max_new_tokens
               for t in texts)


def test_tiny_training_makes_the_loss_fall(tiny_model, tokenizer) -> None:
    from models.datasets import load_dataset
    from models.trail import TrailConfig, build_model
    from models.train_config import TrainConfig
    from models.train_examples import build_examples, training_boundaries
    from models.train_step import StepBuilder, train_step

    log = load_dataset("ml-100k")
    spec = log.default_spec()
    _, train_range, _ = training_boundaries(log, spec, n_origins=8, val_days=7)
    data = build_examples(log, spec, range(train_range.start + 50, train_range.start + 52))
    cfg = TrainConfig.for_base("tiny", batch_size=16, explain_rows=4, contrastive_rows=4, seed=0)
    model = build_model(TrailConfig(base="tiny"), seed=0)
    builder = StepBuilder(tokenizer, model.config, spec.window_slots)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    rows = rng.choice(len(data), size=16, replace=False)   # one fixed batch: the loss must fall on it
    totals = []
    for _ in range(25):
        losses = train_step(model, builder, data, rows, cfg, np.random.default_rng(1))
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        totals.append(float(losses["total"].detach()))
        assert set(losses) == {"forecast", "share", "explanation", "contrastive", "total"}   # tiny: share on
    assert np.mean(totals[-5:]) < 0.7 * np.mean(totals[:5])


def test_saved_model_loads_back_and_refuses_changed_weights(tiny_model, tokenizer, tmp_path) -> None:
    from models.model_card import render_model_card
    from models.trail_scorer import WEIGHTS_FILE, load_trail_scorer, save_trail_model

    card = {"name": "trail-test", "model": "TRAIL", "created_utc": "now", "license_notes": "",
            "base": {"name": "tiny", "source": "test", "fine_tuning": "none"},
            "parameters": {"total": tiny_model.n_params(), "trained": 0},
            "data": {"dataset": "none", "slot_s": 1, "bucket_s": WEEK_S, "n_buckets": 8, "train_rows": 0,
                     "train_boundaries": [], "val_rows": 0, "val_boundaries": [], "leakage_rule": "", "cutoff_utc": ""},
            "hyperparameters": {"steps_done": 0, "steps_planned": 0, "stopped_early": False, "batch_size": 0,
                                "explain_rows": 0, "contrastive": True, "contrastive_rows": 0,
                                "contrastive_weight": 0, "lr": 0, "head_lr": 0, "seed": 0},
            "metrics": {}, "timing": {"load_s": 0, "train_s": 0, "s_per_step": 0, "total_s": 0, "torch_threads": 1}}
    save_trail_model(tiny_model, tokenizer, tmp_path / "m", card, render_model_card)
    scorer = load_trail_scorer(str(tmp_path / "m"))
    assert scorer.name == "trail-test" and len(scorer.sha256) == 64 and scorer.version == scorer.sha256[:12]
    assert (tmp_path / "m" / "MODEL_CARD.md").read_text().count(scorer.sha256) == 1
    batch = tiny_batch()
    torch.testing.assert_close(torch.from_numpy(scorer.forecast(batch)),
                               torch.from_numpy(np.maximum(0, np.expm1(scorer.forecast_log1p(
                                   scorer.features(batch), batch.texts)))))
    weights = tmp_path / "m" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_trail_scorer(str(tmp_path / "m"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_training_on_cuda_without_a_device_fails_clearly_before_any_work() -> None:
    from models.train import TrainConfig, train

    with pytest.raises(ValueError, match="sees no CUDA device"):
        train(TrainConfig.for_base("tiny", device="cuda", steps=1))


# --- the restricted output vocabulary ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rationale_ids(tokenizer) -> list[int]:
    from models.train_step import rationale_output_ids

    return rationale_output_ids(tokenizer, WEEK_S)


def test_the_output_vocabulary_holds_every_token_of_every_template_on_the_catalogue(tokenizer, rationale_ids) -> None:
    from models.datasets import load_dataset

    texts = sorted(load_dataset("ml-100k").items.values())
    rng = np.random.default_rng(0)
    scale = rng.choice([0.5, 3.0, 15.0, 80.0], size=(len(texts), 1))
    counts = rng.poisson(scale * rng.uniform(0.2, 2, (len(texts), 8)))
    batch = FeatureBatch([str(i) for i in range(len(texts))], counts, np.full(len(texts), 99), 100, SPEC, texts)
    forecasts = np.expm1(np.log1p(batch.signals["last_count"]) + rng.normal(0, 0.6, len(texts)))
    targets = [rationale(batch.signals_of(i), float(forecasts[i]), WEEK_S, i, texts[i]) for i in range(len(texts))]
    used = {t for row in tokenizer(targets, add_special_tokens=False)["input_ids"] for t in row}
    assert used <= set(rationale_ids), tokenizer.convert_ids_to_tokens(sorted(used - set(rationale_ids)))
    assert len(rationale_ids) < 300


def test_a_restricted_generator_never_writes_a_token_outside_its_vocabulary(rationale_ids) -> None:
    from models.trail import MASKED_LOGIT, TrailConfig, build_model

    model = build_model(TrailConfig(base="tiny", output_ids=rationale_ids), seed=0)
    h = torch.randn(3, 5, model.lm.config.hidden_size)
    with torch.no_grad():
        full, restricted = model.logits(h), model.output_logits(h)
    assert full.shape[-1] == model.lm.config.vocab_size and restricted.shape[-1] == len(rationale_ids)
    torch.testing.assert_close(full[..., model.output_ids], restricted)
    outside = torch.ones(full.shape[-1], dtype=torch.bool)
    outside[model.output_ids] = False
    assert bool((full[..., outside] == MASKED_LOGIT).all())
    assert set(full.argmax(dim=-1).flatten().tolist()) <= set(rationale_ids)


def test_an_explanation_target_outside_the_output_vocabulary_fails_clearly(rationale_ids) -> None:
    from models.trail import TrailConfig, build_model
    from models.trail_losses import explanation_loss

    model = build_model(TrailConfig(base="tiny", output_ids=rationale_ids), seed=0)
    h = torch.randn(1, 3, model.lm.config.hidden_size)
    inside = torch.tensor([[-100, rationale_ids[3], rationale_ids[4]]])
    assert torch.isfinite(explanation_loss(model, h, inside))
    outside_id = next(i for i in range(100, 50_000) if i not in set(rationale_ids))
    with pytest.raises(ValueError, match="outside the model's output vocabulary"):
        explanation_loss(model, h, torch.tensor([[-100, rationale_ids[3], outside_id]]))


# --- the copy path ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def copy_model(rationale_ids):
    from models.trail import TrailConfig, build_model

    return build_model(TrailConfig(base="tiny", output_ids=rationale_ids, copy_path=True), seed=0).eval()


def test_copy_path_cached_decoding_equals_one_pass(copy_model) -> None:
    """The pointer's keys come from the cache: a prompt pass then one cached step equals one pass over all tokens."""
    from transformers import DynamicCache

    from models.trail import context_ids, numeric_features, prompt_inputs

    batch = tiny_batch()
    features = numeric_features(batch.bucket_counts, batch.signals, SPEC.window_slots)
    ids_7 = copy_model.output_ids[7]   # a token of the output vocabulary, fed as the next one
    rows = [[1, 300, 301, 33], [1, 400, 34], [1, 35]]
    n_prefix = copy_model.config.n_prefix
    ids, mask, pos, numeric = prompt_inputs(rows, features, n_prefix)
    full_ids, full_mask, full_pos, _ = prompt_inputs([r + [int(ids_7)] for r in rows], features, n_prefix)
    with torch.no_grad():
        full, _ = copy_model.next_token_logits(full_ids, full_mask, full_pos, numeric,
                                               DynamicCache(config=copy_model.lm.config),
                                               context_ids(full_ids, n_prefix))
        _, cache = copy_model.next_token_logits(ids, mask, pos, numeric, DynamicCache(config=copy_model.lm.config),
                                                context_ids(ids, n_prefix))
        step_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        step_context = torch.cat([context_ids(ids, n_prefix), torch.full((3, 1), int(ids_7))], dim=1)
        step, _ = copy_model.next_token_logits(torch.full((3, 1), int(ids_7)), step_mask, pos[:, -1:] + 1,
                                               numeric[:, :0], cache, step_context)
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)


def test_copy_path_adds_the_pointer_mass_to_the_copied_token(copy_model) -> None:
    """log p(token) = log(exp(vocab logit) + sum of exp(pointer scores) over the positions holding it), jointly
    normalised: the pointer can only add probability to tokens present in the context."""
    from models.trail import CopyContext

    n_kv, head_dim = copy_model.lm.config.num_key_value_heads, 32
    keys = torch.randn(1, n_kv, 3, head_dim)
    source = torch.tensor([[5, 9, 5]])
    copy = CopyContext(keys, source, torch.tensor([[True, True, False]]))
    h = torch.randn(1, 1, copy_model.lm.config.hidden_size)
    with torch.no_grad():
        mixed = copy_model.output_logits(h, copy)[0, 0]
        vocab = copy_model.output_logits(h)[0, 0]
        query = copy_model.copy_query(h).view(1, 1, n_kv, head_dim).transpose(1, 2)
        scores = (query @ keys.transpose(-1, -2)).sum(dim=1)[0, 0] / (n_kv * head_dim) ** 0.5
    expected = vocab.exp().clone()
    expected[5] += scores[0].exp()   # position 2 holds token 5 too, but it may not be copied
    expected[9] += scores[1].exp()
    torch.testing.assert_close(mixed, expected.log(), atol=1e-5, rtol=1e-5)


# --- forecasting a correction on top of a counting baseline (--forecast-base) --------------------------------


def spread_batch() -> FeatureBatch:
    """tiny_batch with last events 1, 10 and 20 slots before the boundary (reddit-decay's age), and a silent item."""
    counts = np.array([[0, 1, 2, 3, 5, 8, 8, 12], [9, 9, 8, 7, 6, 5, 4, 3], [0, 0, 0, 0, 0, 0, 0, 1],
                       [0, 0, 0, 0, 0, 0, 0, 0]])
    return FeatureBatch(item_ids=["1", "2", "3", "4"], bucket_counts=counts,
                        last_event_slot=np.array([99, 90, 80, -1]), boundary_slot=100, spec=SPEC)


@pytest.mark.parametrize("kind", ["ema", "reddit-decay"])
def test_forecast_base_reproduces_the_counting_baseline_from_the_model_features(kind) -> None:
    from models.baselines import EMAScorer, RedditDecayScorer
    from models.trail import base_forecast_log1p, numeric_features

    batch = spread_batch()
    expected = (EMAScorer() if kind == "ema" else RedditDecayScorer()).forecast(batch)
    features = torch.from_numpy(numeric_features(batch.bucket_counts, batch.signals, SPEC.window_slots))
    got = np.expm1(base_forecast_log1p(features, kind, SPEC.n_buckets).double().numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_an_unknown_forecast_base_fails_clearly() -> None:
    from models.trail import base_forecast_log1p

    with pytest.raises(ValueError, match="forecast_base must be one of"):
        base_forecast_log1p(torch.zeros(1, 16), "gbr", 8)


def test_a_forecast_base_model_adds_the_head_output_to_the_baseline() -> None:
    """The same seed gives the same head; with a base, the forecast is the head's output + log1p(baseline)."""
    from models.trail import TrailConfig, base_forecast_log1p, build_model, numeric_features

    plain = build_model(TrailConfig(base="tiny"), seed=0)
    based = build_model(TrailConfig(base="tiny", forecast_base="ema"), seed=0)
    batch = spread_batch()
    features = torch.from_numpy(numeric_features(batch.bucket_counts, batch.signals, SPEC.window_slots))
    text_vec = torch.randn(len(batch), plain.lm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        head, h_plain = plain.forecast(features, text_vec)
        total, h_based = based.forecast(features, text_vec)
    torch.testing.assert_close(total, head + base_forecast_log1p(features, "ema", SPEC.n_buckets))
    torch.testing.assert_close(h_based, h_plain)


def test_ranking_validation_averages_ndcg_over_boundaries() -> None:
    from models.train import ranking_validation

    truth = np.array([5.0, 1.0, 0.0, 3.0, 2.0, 1.0])
    boundary = np.array([0, 0, 0, 1, 1, 1])
    perfect = ranking_validation(truth, truth, boundary, k=2)
    assert perfect == {"mae": 0.0, "item_ndcg@2": 1.0}
    reversed_ = ranking_validation(-truth, truth, boundary, k=2)
    assert reversed_["item_ndcg@2"] < 1.0 and reversed_["mae"] == pytest.approx(np.abs(2 * truth).mean(), abs=1e-4)


# --- the listwise share loss (--share-weight) ----------------------------------------------------------------


def test_share_loss_is_lowest_when_forecasts_match_the_true_shares() -> None:
    from models.trail_losses import share_loss

    truth = torch.tensor([30.0, 10.0, 0.0, 60.0])
    right = share_loss(torch.log(truth + 1e-6), truth)             # softmax(log count) = the true shares
    wrong = share_loss(torch.log(truth.flip(0) + 1e-6), truth)
    entropy = float(-(truth / truth.sum() * torch.log((truth / truth.sum()).clamp(min=1e-12))).sum())
    assert float(right) == pytest.approx(entropy, abs=1e-4) and float(wrong) > float(right) + 1.0
    # a common shift (the volume) does not change it: it scores the ranking only
    assert float(share_loss(torch.log(truth + 1e-6) + 3.0, truth)) == pytest.approx(float(right), abs=1e-4)
    assert float(share_loss(torch.zeros(3), torch.zeros(3))) == 0.0


def test_share_batches_come_from_one_boundary_and_the_default_draw_is_unchanged() -> None:
    from models.train import batch_rows
    from models.train_config import TrainConfig
    from models.train_examples import Examples

    n = 60
    data = Examples(features=np.zeros((n, 16), np.float32), signals=np.zeros((n, 7)), text_index=np.zeros(n, np.int64),
                    targets=np.arange(n, dtype=np.float64), boundary=np.repeat([10, 11, 12], 20))
    plain = TrainConfig.for_base("tiny", batch_size=8, share_weight=0.0)
    assert np.array_equal(batch_rows(data, plain, np.random.default_rng(0)),
                          np.random.default_rng(0).choice(n, size=8, replace=False))
    ranked = TrainConfig.for_base("tiny", batch_size=8, share_weight=0.5)
    for seed in range(5):
        rows = batch_rows(data, ranked, np.random.default_rng(seed))
        assert len(rows) == 8 and len(set(rows)) == 8 and len(np.unique(data.boundary[rows])) == 1
