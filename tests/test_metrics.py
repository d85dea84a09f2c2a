"""Backtest metrics against small hand-computed cases (models.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import metrics
from models.scoring import direction_of


def test_mae_and_rmsle_match_hand_computation():
    forecast = np.array([2.0, 0.0, 5.0])
    truth = np.array([1.0, 3.0, 5.0])
    assert metrics.mae(forecast, truth) == pytest.approx((1 + 3 + 0) / 3)
    expected = math.sqrt(((math.log(3) - math.log(2)) ** 2 + (math.log(1) - math.log(4)) ** 2 + 0) / 3)
    assert metrics.rmsle(forecast, truth) == pytest.approx(expected)


def test_rmsle_treats_negative_forecasts_as_zero():
    assert metrics.rmsle(np.array([-4.0]), np.array([0.0])) == 0.0


def test_ranking_breaks_ties_by_row_order_after_rounding_to_six_decimals():
    forecast = np.array([1.0, 2.0, 2.0 + 1e-9, 0.5])
    assert metrics.ranking_order(forecast).tolist() == [1, 2, 0, 3]
    assert metrics.ranks(forecast).tolist() == [2, 0, 1, 3]


def test_item_ndcg_uses_true_counts_as_gains():
    # top-2 by forecast: rows 0 (gain 1) and 1 (gain 2); ideal order: 2 then 1
    dcg = 1 / math.log2(2) + 2 / math.log2(3)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert metrics.item_ndcg_at_k(np.array([3.0, 2.0, 1.0]), np.array([1, 2, 0]), 2) == pytest.approx(dcg / idcg)


def test_item_ndcg_is_one_for_the_true_order_and_nan_without_positive_counts():
    assert metrics.item_ndcg_at_k(np.array([5.0, 1.0, 3.0]), np.array([9, 1, 4]), 10) == pytest.approx(1.0)
    assert math.isnan(metrics.item_ndcg_at_k(np.array([1.0, 2.0]), np.array([0, 0]), 10))


def test_item_recall_counts_ties_at_the_kth_count_as_relevant():
    truth = np.array([5, 3, 3, 0])        # true top-2 is row 0 and either of rows 1, 2
    assert metrics.item_recall_at_k(np.array([9.0, 0.0, 0.0, 8.0]), truth, 2) == pytest.approx(0.5)
    assert metrics.item_recall_at_k(np.array([9.0, 0.0, 8.0, 0.0]), truth, 2) == pytest.approx(1.0)


def test_item_recall_ignores_zero_counts_as_relevant_items():
    truth = np.array([4, 0, 0])           # only one item has any interactions: recall is out of 1
    assert metrics.item_recall_at_k(np.array([1.0, 3.0, 2.0]), truth, 2) == pytest.approx(0.0)
    assert metrics.item_recall_at_k(np.array([3.0, 1.0, 2.0]), truth, 2) == pytest.approx(1.0)


def test_rising_mask_agrees_with_the_scoring_direction_rule():
    rng = np.random.default_rng(3)
    last = rng.integers(0, 30, size=500).astype(float)
    forecast = np.maximum(0.0, last + rng.normal(0, 3, size=500)).round(2)
    expected = [direction_of(f, c) == "rising" for f, c in zip(forecast, last, strict=True)]
    assert metrics.rising_mask(forecast, last).tolist() == expected


def test_rising_precision_counts_calls_confirmed_by_the_truth():
    last = np.array([10.0, 10.0, 10.0, 10.0])
    forecast = np.array([20.0, 20.0, 10.0, 5.0])    # two rising calls
    truth = np.array([15.0, 9.0, 30.0, 30.0])        # the first call is right, the second wrong
    called, correct = metrics.rising_calls(forecast, truth, last)
    assert called.tolist() == [True, True, False, False]
    assert correct.tolist() == [True, False, False, False]


def test_user_metrics_hand_computed():
    # user 0 interacted with the items ranked 0 and 5; user 1 with one item not in the ranking
    user_index = np.array([0, 0, 1])
    item_rank = np.array([0, 5, metrics.UNRANKED])
    at3 = metrics.user_metrics_at_k(user_index, item_rank, 3)
    assert at3["recall"].tolist() == [0.5, 0.0]
    assert at3["hr"].tolist() == [1.0, 0.0]
    assert at3["ndcg"][0] == pytest.approx(1.0 / (1.0 + 1 / math.log2(3)))
    assert at3["ndcg"][1] == 0.0
    at10 = metrics.user_metrics_at_k(user_index, item_rank, 10)
    assert at10["recall"][0] == 1.0
    assert at10["ndcg"][0] == pytest.approx((1 + 1 / math.log2(7)) / (1 + 1 / math.log2(3)))


def test_user_ndcg_ideal_is_capped_at_k():
    # five relevant items, k = 2, both top slots hit: perfect NDCG@2 but recall 2/5
    at2 = metrics.user_metrics_at_k(np.zeros(5, dtype=np.int64), np.array([0, 1, 7, 8, 9]), 2)
    assert at2["ndcg"][0] == pytest.approx(1.0)
    assert at2["recall"][0] == pytest.approx(0.4)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(0).exponential(size=300)
    first = metrics.bootstrap_mean_ci(values, 500, seed=7)
    assert first == metrics.bootstrap_mean_ci(values, 500, seed=7)
    assert first[0] < values.mean() < first[1]
    assert metrics.bootstrap_mean_ci(np.full(10, 2.0), 100, seed=0) == (2.0, 2.0)


def test_bootstrap_ratio_is_nan_without_rows():
    low, high = metrics.bootstrap_ratio_ci(np.zeros(0), np.zeros(0), 100, seed=0)
    assert math.isnan(low) and math.isnan(high)


def test_circular_blocks_are_seeded_sorted_and_a_full_length_block_is_every_origin_once():
    idx = metrics.circular_block_indices(10, 3, 50, seed=1)
    assert idx.shape == (50, 10)
    assert np.array_equal(idx, metrics.circular_block_indices(10, 3, 50, seed=1))
    assert np.all(np.diff(idx, axis=1) >= 0)
    assert (metrics.circular_block_indices(10, 10, 5, seed=2) == np.arange(10)).all()


def test_circular_blocks_hold_runs_of_consecutive_origins_wrapping_at_the_end():
    idx = metrics.circular_block_indices(7, 7, 200, seed=0)      # one block: a rotation of all origins
    assert all(sorted(row) == list(range(7)) for row in idx.tolist())
    counts = np.bincount(metrics.circular_block_indices(20, 5, 400, seed=0).ravel(), minlength=20)
    assert counts.min() > 0                                       # the wrap reaches the last origins too


def test_origin_sums_pool_over_origins_and_take_the_root_for_rmsle():
    sums = metrics.OriginSums(np.array([2.0, 6.0]), np.array([1.0, 3.0]))
    assert sums.value == pytest.approx(2.0)
    assert metrics.OriginSums(np.array([2.0, 6.0]), np.array([1.0, 3.0]), root=True).value == pytest.approx(2 ** 0.5)
    assert math.isnan(metrics.OriginSums(np.zeros(2), np.zeros(2)).value)


def test_long_run_variance_of_independent_noise_is_its_variance():
    x = np.random.default_rng(0).normal(size=20_000)
    assert metrics.long_run_variance(x, 6) == pytest.approx(1.0, abs=0.1)


def test_long_run_variance_adds_the_covariance_of_overlapping_sums():
    # moving sums of 7 independent draws: variance 7, long-run variance 49
    z = np.random.default_rng(1).normal(size=50_000)
    x = np.convolve(z, np.ones(7), mode="valid")
    assert metrics.long_run_variance(x, 6) == pytest.approx(49.0, rel=0.1)


def test_long_run_variance_stays_positive_for_alternating_series():
    x = np.tile([1.0, -1.0], 20)
    assert metrics.long_run_variance(x, 1) > 0


def test_diebold_mariano_separates_a_real_difference_from_noise():
    rng = np.random.default_rng(2)
    noise = rng.normal(size=60)
    assert metrics.diebold_mariano_p_value(1.0, noise - noise.mean(), horizon=1) < 0.001
    assert metrics.diebold_mariano_p_value(noise.mean(), noise - noise.mean(), horizon=1) > 0.05
    assert metrics.diebold_mariano_p_value(0.0, np.zeros(60), horizon=7) == 1.0
    assert math.isnan(metrics.diebold_mariano_p_value(1.0, np.ones(2), horizon=1))


def test_overlap_makes_the_diebold_mariano_test_more_cautious():
    z = np.random.default_rng(3).normal(size=56)
    d = np.convolve(z, np.ones(7) / 7, mode="valid") + 0.3      # a shift seen through overlapping windows
    assert metrics.diebold_mariano_p_value(d.mean(), d - d.mean(), horizon=7) > \
        metrics.diebold_mariano_p_value(d.mean(), d - d.mean(), horizon=1)


def test_paired_difference_is_the_difference_of_pooled_values_with_an_interval_around_it():
    rng = np.random.default_rng(4)
    rows = rng.integers(50, 100, size=40).astype(float)
    reference = metrics.OriginSums(rows * rng.uniform(1.0, 2.0, size=40), rows)
    method = metrics.OriginSums(reference.numerator - rows * 0.2, rows)
    idx = metrics.circular_block_indices(40, 7, 500, seed=0)
    out = metrics.paired_difference(method, reference, idx, horizon=7)
    assert out["diff"] == pytest.approx(method.value - reference.value)
    assert out["diff"] == pytest.approx(-0.2)
    assert out["diff_ci"][0] <= out["diff"] <= out["diff_ci"][1]
    assert out["p_value"] == 0.0                               # the same -0.2 at every origin


def test_paired_difference_of_a_ratio_with_different_denominators():
    # rising precision: 3/4 against 1/4 pooled over two origins
    method = metrics.OriginSums(np.array([1.0, 2.0]), np.array([2.0, 2.0]))
    reference = metrics.OriginSums(np.array([0.0, 1.0]), np.array([1.0, 3.0]))
    out = metrics.paired_difference(method, reference, metrics.circular_block_indices(2, 1, 100, seed=0), 1)
    assert out["diff"] == pytest.approx(0.5)
    assert math.isnan(out["p_value"])                          # fewer than 3 origins: no test
