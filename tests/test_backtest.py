"""The rolling-origin backtest: origins, no leakage for any scorer, hand-checked metrics, determinism, CLI."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest

from models.backtest import SEGMENTS, forecasts_at, origin_iso, run_backtest
from models.backtest_data import DEFAULT_ORIGINS, backtest_origins, targets_at
from models.baselines import EMAScorer, GradientBoostingScorer, MostPopScorer, RecentPopScorer, default_baselines
from models.datasets import EventLog, load_dataset, sorted_log
from models.scoring import FittableScorer
from models.windows import WindowSpec
from streams.cli import main

DAY_MS = 86_400_000
METRIC_NAMES = ["mae", "rmsle", "item_ndcg@10", "item_recall@10", "rising_precision"] + [
    f"user_{m}@{k}" for m in ("recall", "ndcg", "hr") for k in (5, 10, 20)]
SPEC = WindowSpec(slot_s=86_400, bucket_s=7 * 86_400, n_buckets=3, allowed_lateness_s=86_400)


@pytest.fixture(scope="module")
def ml100k() -> EventLog:
    return load_dataset("ml-100k")


def log_of(events: list[tuple[str, float, str]], spec: WindowSpec = SPEC) -> EventLog:
    """A log from (item, day, user) triples."""
    item, day, user = zip(*events, strict=True)
    return sorted_log("tiny", np.array(item, dtype=object), np.array(user, dtype=object),
                      (np.array(day) * DAY_MS).astype(np.int64), None, None, {}, spec)


def random_log(seed: int, days: int = 70, n_events: int = 3000) -> EventLog:
    """Items with growing, fading and steady popularity over `days` days."""
    rng = np.random.default_rng(seed)
    day = rng.uniform(0, days, n_events)
    item = np.where(rng.random(n_events) < day / days, rng.integers(0, 8, n_events), rng.integers(5, 25, n_events))
    return log_of([(f"i{i}", d, f"u{rng.integers(0, 40)}") for i, d in zip(item, day, strict=True)])


def with_future_replaced(log: EventLog, origin_ms: int, seed: int) -> EventLog:
    """The same events before `origin_ms`; everything at or after it replaced by different random events."""
    rng = np.random.default_rng(seed)
    keep = log.ts_ms < origin_ms
    n_new = int((~keep).sum()) * 2 + 10
    span_ms = int(log.ts_ms[-1] - origin_ms) + 30 * DAY_MS
    items = np.concatenate([log.item_id[keep], rng.choice(log.item_vocab, n_new).astype(object)])
    items[-5:] = "brand-new-item"
    return sorted_log(
        log.name, items,
        np.concatenate([log.user_id[keep], np.array([f"x{u}" for u in rng.integers(0, 50, n_new)], dtype=object)]),
        np.concatenate([log.ts_ms[keep], origin_ms + rng.integers(0, span_ms, n_new)]),
        None, None, log.items, log.spec,
    )


def test_origins_are_one_slot_apart_and_end_with_the_last_complete_bucket(ml100k):
    spec = ml100k.default_spec()
    origins = backtest_origins(ml100k, spec)
    assert len(origins) == DEFAULT_ORIGINS == 50
    assert np.diff(origins).tolist() == [1] * 49
    assert origins[-1] + spec.slots_per_bucket == spec.slot_of(int(ml100k.ts_ms[-1])) + 1
    assert origins[0] - spec.window_slots >= spec.slot_of(int(ml100k.ts_ms[0]))


def test_default_origins_span_the_former_eight_weekly_origins(ml100k):
    # a model trained before the first origin (its cutoff) stays comparable with the earlier protocol
    spec = ml100k.default_spec()
    origins = backtest_origins(ml100k, spec)
    assert origins[0] == origins[-1] - 7 * spec.slots_per_bucket
    assert origin_iso(spec, origins[0])[:10] == "1998-02-26" and origin_iso(spec, origins[-1])[:10] == "1998-04-16"


def test_too_many_origins_are_refused_with_the_number_that_fits(ml100k):
    with pytest.raises(ValueError, match="at most 153 origins"):
        backtest_origins(ml100k, ml100k.default_spec(), 200)


def test_no_scorer_reads_events_at_or_after_the_origin(ml100k):
    spec = ml100k.default_spec()
    origins = backtest_origins(ml100k, spec)
    # the first and the last origin, and one between two weekly gbr fits (the model fitted 3 slots before)
    for origin in (origins[0], origins[3], origins[-1]):
        perturbed = with_future_replaced(ml100k, spec.boundary_ms(origin), seed=origin)
        ids = ml100k.item_vocab.tolist()
        assert not np.array_equal(targets_at(ml100k, spec, origin, ids), targets_at(perturbed, spec, origin, ids))
        batch, forecasts = forecasts_at(ml100k, spec, default_baselines(), origin)
        batch_p, forecasts_p = forecasts_at(perturbed, spec, default_baselines(), origin)
        assert batch.item_ids == batch_p.item_ids
        np.testing.assert_array_equal(batch.bucket_counts, batch_p.bucket_counts)
        assert forecasts.keys() == forecasts_p.keys()
        for name in forecasts:
            np.testing.assert_array_equal(forecasts[name], forecasts_p[name], err_msg=name)


def test_gbr_is_fitted_at_or_before_the_origin_whatever_came_before(ml100k):
    spec = ml100k.default_spec()
    origins = backtest_origins(ml100k, spec)
    origin = origins[3]
    assert GradientBoostingScorer().fit_slot(spec, origin) <= origin
    batch, _ = forecasts_at(ml100k, spec, [], origin)
    fresh, walked = GradientBoostingScorer(), GradientBoostingScorer()
    fresh.fit(ml100k.before(spec.boundary_ms(origin)), spec, origin)
    for earlier in origins[:4]:             # as the backtest walks: the weekly model is reused mid-week
        walked.fit(ml100k.before(spec.boundary_ms(earlier)), spec, earlier)
    np.testing.assert_array_equal(fresh.forecast(batch), walked.forecast(batch))


def test_learners_fit_on_the_full_log_equals_fit_on_the_history(ml100k):
    # the fit hook itself only uses targets that end at or before the origin, even when given more
    spec = ml100k.default_spec()
    origin = backtest_origins(ml100k, spec)[4]
    history = ml100k.before(spec.boundary_ms(origin))
    batch, _ = forecasts_at(ml100k, spec, [], origin)
    for make in (MostPopScorer, GradientBoostingScorer):
        on_history, on_everything = make(), make()
        assert isinstance(on_history, FittableScorer)
        on_history.fit(history, spec, origin)
        on_everything.fit(ml100k, spec, origin)
        np.testing.assert_array_equal(on_history.forecast(batch), on_everything.forecast(batch))


def test_gbr_training_targets_end_at_or_before_the_origin():
    log = random_log(seed=4)
    origin = 50
    features, targets = GradientBoostingScorer(stride_slots=1).training_pairs(log, SPEC, origin)
    features_h, targets_h = GradientBoostingScorer(stride_slots=1).training_pairs(
        log.before(SPEC.boundary_ms(origin)), SPEC, origin)
    np.testing.assert_array_equal(targets, targets_h)
    np.testing.assert_array_equal(features, features_h)


def test_recent_popularity_metrics_match_a_hand_computed_origin():
    # window at origin day 21 (days 0-20): a = [1, 0, 1], b = [0, 0, 2]; target week: a = 3, b = 0
    log = log_of([("a", 0.5, "u1"), ("b", 15, "u2"), ("b", 16, "u2"), ("a", 20, "u3"),
                  ("a", 22, "u1"), ("a", 23, "u2"), ("a", 27.5, "u4")])
    result = run_backtest(log, SPEC, [RecentPopScorer()], n_origins=1, n_boot=50)
    metrics = result["results"]["recent-pop"]
    assert result["origins"] == ["1970-01-22T00:00:00+00:00"]
    assert metrics["mae"] == pytest.approx(2.0)                        # |1 - 3|, |2 - 0|
    assert metrics["rmsle"] == pytest.approx(math.sqrt((math.log(2 / 4) ** 2 + math.log(3) ** 2) / 2))
    assert metrics["item_ndcg@10"] == pytest.approx(1 / math.log2(3))  # b (0) ranked above a (3)
    assert metrics["item_recall@10"] == 1.0
    assert metrics["rising_calls"] == 0 and math.isnan(metrics["rising_precision"])
    for k in (5, 10, 20):                                              # u1, u2, u4 each want a, ranked 2nd
        assert metrics[f"user_recall@{k}"] == 1.0 and metrics[f"user_hr@{k}"] == 1.0
        assert metrics[f"user_ndcg@{k}"] == pytest.approx(1 / math.log2(3))


def test_result_has_every_metric_with_an_interval_for_every_method():
    result = run_backtest(random_log(seed=1), SPEC, default_baselines(), n_origins=2, n_boot=100)
    assert set(result) >= {"dataset", "bucket_s", "origins", "seconds", "results", "paired", "segments", "test"}
    assert list(result["results"]) == [s.name for s in default_baselines()]
    for method, values in result["results"].items():
        for name in METRIC_NAMES:
            assert name in values and len(values[f"{name}_ci"]) == 2, (method, name)
        low, high = values["mae_ci"]
        assert low <= values["mae"] <= high


def test_every_metric_compares_each_method_with_the_best_baseline():
    result = run_backtest(random_log(seed=1), SPEC, default_baselines(), n_origins=12, n_boot=200)
    assert set(result["paired"]) == set(METRIC_NAMES)
    for name, entry in result["paired"].items():
        best = entry["best_baseline"]
        values = {m: v[name] for m, v in result["results"].items() if not math.isnan(v[name])}
        pick = min if name in ("mae", "rmsle") else max
        assert values[best] == pick(values.values()), name
        assert set(entry["methods"]) == set(result["results"]) - {best}
        for method, comparison in entry["methods"].items():
            if method not in values:             # e.g. recent-pop never calls "rising"
                assert math.isnan(comparison["diff"])
                continue
            assert comparison["diff"] == pytest.approx(values[method] - values[best]), (name, method)
            assert 0.0 <= comparison["p_value"] <= 1.0
            assert comparison["verdict"] in ("better", "worse", "not significant")


def test_significance_needs_the_interval_to_exclude_zero_and_p_below_alpha():
    result = run_backtest(random_log(seed=1), SPEC, default_baselines(), n_origins=12, n_boot=200)
    for name, entry in result["paired"].items():
        for comparison in entry["methods"].values():
            low, high = comparison["diff_ci"]
            significant = comparison["p_value"] < 0.05 and (low > 0 or high < 0)
            assert (comparison["verdict"] != "not significant") == significant, name


def test_segments_split_every_item_forecast_once():
    result = run_backtest(random_log(seed=1), SPEC, default_baselines(), n_origins=6, n_boot=50)
    assert list(result["segments"]) == list(SEGMENTS)
    assert sum(s["n_item_forecasts"] for s in result["segments"].values()) == result["n_item_forecasts"]
    for segment in result["segments"].values():
        assert set(segment["results"]) == set(result["results"])
        assert "mae" in segment["paired"] and "mae_ci" in segment["results"]["ema"]


def test_cold_items_are_those_first_seen_in_the_last_four_buckets():
    # at origin day 35: "old" first seen on day 0 (5 buckets back), "new" on day 10 (< 4 buckets back)
    log = log_of([("old", 0, "u1"), ("old", 30, "u1"), ("new", 10, "u2"), ("new", 33, "u2"), ("old", 36, "u3"),
                  ("new", 37, "u1"), ("new", 41, "u4")])
    result = run_backtest(log, SPEC, [RecentPopScorer()], n_origins=1, n_boot=10)
    assert result["origins"] == ["1970-02-05T00:00:00+00:00"]     # day 35
    assert result["segments"]["cold"]["n_item_forecasts"] == 1
    assert result["segments"]["cold"]["results"]["recent-pop"]["mae"] == pytest.approx(1.0)   # new: 1 vs 2
    assert result["segments"]["rose"]["n_item_forecasts"] == 1                                # old: 0 then 1


def test_backtest_on_ml100k_is_deterministic(ml100k):
    spec = ml100k.default_spec()
    first = run_backtest(ml100k, spec, default_baselines(), n_origins=2, n_boot=200)
    second = run_backtest(ml100k, spec, default_baselines(), n_origins=2, n_boot=200)
    first.pop("seconds"), second.pop("seconds")
    assert json.dumps(first) == json.dumps(second)


def write_jsonl(log: EventLog, path) -> None:
    path.write_text("".join(json.dumps(event) + "\n" for event in log.iter_events()))


def test_cli_prints_one_json_object_and_writes_the_report(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    write_jsonl(random_log(seed=2), events)
    code = main(["backtest", "--dataset", str(events), "--json", "--report", str(tmp_path / "report"),
                 "--origins", "2", "--n-buckets", "3", "--boot", "50"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "events" and len(result["origins"]) == 2
    assert "gbr" in result["results"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| gbr |" in report and "metrics.png" in report
    assert "Paired differences against the best baseline" in report and "### cold" in report
    assert (tmp_path / "report" / "metrics.png").stat().st_size > 0
    assert (tmp_path / "report" / "top_items.png").stat().st_size > 0


def test_cli_model_is_backtested_and_its_explanations_checked(tmp_path, capsys, monkeypatch):
    class FakeTrail(EMAScorer):
        name = "trail-fake"

    loaded = []
    scorer_module = types.ModuleType("models.trail_scorer")
    scorer_module.load_trail_scorer = lambda name_or_path: loaded.append(name_or_path) or FakeTrail()
    checker_module = types.ModuleType("models.faithfulness")
    # faithful when the text cites the last count; consistent when it states "Rising" for a rise
    checker_module.check_explanation = lambda text, signals, forecast, last, item_text="": (
        f"{signals['last_count']:g} interactions" in text, text.startswith("Rising") == (forecast > last * 1.05))
    monkeypatch.setitem(sys.modules, "models.trail_scorer", scorer_module)
    monkeypatch.setitem(sys.modules, "models.faithfulness", checker_module)
    events = tmp_path / "events.jsonl"
    write_jsonl(random_log(seed=3), events)
    assert main(["backtest", "--dataset", str(events), "--model", "tiny", "--json", "--origins", "2",
                 "--n-buckets", "3", "--boot", "20", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)["results"]["trail-fake"]
    assert loaded == ["tiny"]
    assert result["explained"] == 20                     # top 10 at each of 2 origins
    assert 0.0 <= result["faithfulness"] <= 1.0 and 0.0 <= result["direction_consistency"] <= 1.0
    assert result["faithfulness"] == 1.0                  # the template always cites the last count
