"""The strict faithfulness checker against adversarial sentences, and every template against the checker.

Each adversarial sentence is false in one way a reader would care about (a number in the wrong role, the
right number for another role, a comparative the numbers contradict, a made-up quantity, a wrong trend
phrase, a number with no role) while every number in it is within 5 % of *some* signal and its first
direction word is right: the pre-issue-14 checker passed all of them. Positive sentences are true and
must pass. The property test draws random count histories and forecasts and checks that every template
passes by construction (seeded: hypothesis is not installed in this environment).
"""

from __future__ import annotations

import numpy as np
import pytest

from models.faithfulness import check_explanation
from models.features import FeatureBatch
from models.rationales import N_TEMPLATES, rationale
from models.scoring import template_explanation
from models.windows import WindowSpec
from models.wording import item_descriptor, trend_phrase

WEEK_S = 7 * 86_400
# item 748 of the issue: 6, 4, 11 in the last three weeks (a jump), forecast 10.34 (falling)
JUMP = {"last_count": 11.0, "prev_count": 4.0, "velocity": 7.0, "acceleration": 9.0, "growth_pct": 175.0,
        "mean_count": 10.375, "recency_slots": 1.0}
# 7, 8, 12 (rising), forecast 15.3
RISE = {"last_count": 12.0, "prev_count": 8.0, "velocity": 4.0, "acceleration": 3.0, "growth_pct": 50.0,
        "mean_count": 9.375, "recency_slots": 1.0}
# 8, 10, 10 (flat), forecast 10.2 (steady)
FLAT = {"last_count": 10.0, "prev_count": 10.0, "velocity": 0.0, "acceleration": -2.0, "growth_pct": 0.0,
        "mean_count": 9.0, "recency_slots": 1.0}
# 9, 9, 3 (a drop), forecast 2.0 (falling)
DROP = {"last_count": 3.0, "prev_count": 9.0, "velocity": -6.0, "acceleration": -6.0, "growth_pct": -66.6667,
        "mean_count": 8.0, "recency_slots": 2.0}
CASES = {"jump": (JUMP, 10.34), "rise": (RISE, 15.3), "flat": (FLAT, 10.2), "drop": (DROP, 2.0)}
HEAT = "Heat (1995) | Action, Crime, Thriller"

ADVERSARIAL = [
    # wrong role / the right number for another role
    ("the issue's sentence: the average as last week, and up from itself",
     "jump", "Falling: about 10.0 interactions expected next week. It had 10 last week, up from 10."),
    ("the 8-week mean cited as last week", "jump",
     "Falling: about 10.3 interactions expected next week. It had 10.4 interactions last week."),
    ("the forecast cited as last week", "jump",
     "Falling: 10.3 interactions in the last week; expected about 10.3 next week."),
    ("last week's count cited as the week before", "jump",
     "Falling: about 10.3 interactions expected next week; 11 interactions the week before."),
    ("the change cited as the week before", "jump",
     "Falling: about 10.3 interactions expected next week. It had 11 interactions last week, up from 7."),
    ("the acceleration cited as the average", "jump",
     "Falling: about 10.3 interactions expected next week, against a window average of 9."),
    ("last week's count cited as the forecast", "jump", "Falling: about 11 interactions expected next week."),
    ("the change cited as the bucket before the previous one", "jump",
     "Falling: about 10.3 interactions expected next week. It went from 7 to 4 to 11 interactions over the last "
     "three weeks."),
    ("the acceleration cited as a change on the week before", "jump",
     "Falling: about 10.3 interactions expected next week, after a change of +9 on the week before."),
    # comparatives the numbers contradict
    ("down when it went up", "jump",
     "Falling: about 10.3 interactions expected next week. It had 11 interactions last week, down from 4."),
    ("up from 10 when it was 10", "flat",
     "Steady: about 10.2 interactions expected next week. It had 10 last week, up from 10."),
    ("below the average when above it", "jump",
     "Falling: about 10.3 interactions expected next week. Its 11 interactions last week are below its window average "
     "of 10.4."),
    ("half when more than double", "jump",
     "Falling: about 10.3 interactions expected next week. Its 11 interactions last week are half the 4 of the week "
     "before."),
    ("double when 1.5x", "rise",
     "Rising: about 15.3 interactions expected next week. Its 12 interactions last week are double the 8 of the week "
     "before."),
    ("losing momentum when gaining", "jump",
     "Falling: about 10.3 interactions expected next week. It is losing momentum (acceleration +9) after 11 last "
     "week."),
    ("no interactions when there were 11", "jump",
     "Falling: about 10.3 interactions expected next week. It had no interactions last week, against a window average "
     "of 10.4."),
    ("twice as many, unbound and false", "rise",
     "Rising: about 15.3 interactions expected next week, twice as many as before."),
    # wrong trend phrase (the first direction word is right)
    ("a second headline that contradicts the forecast", "jump",
     "Falling: about 10.3 interactions expected next week. Rising: it had 11 interactions last week, up from 4."),
    ("rebounding when nothing fell", "rise", "Rising and rebounding: about 15.3 interactions expected next week."),
    ("cooling after a jump when it dropped", "drop",
     "Falling: about 2.0 interactions expected next week, cooling after a jump."),
    ("steady after a drop when it was flat", "flat",
     "Steady: about 10.2 interactions expected next week, steady after a drop."),
    # made-up quantities and claims
    ("a peak nobody measured", "jump",
     "Falling: about 10.3 interactions expected next week; it peaked at 11 in the spring."),
    ("viewers the signals do not hold", "jump",
     "Falling: about 10.3 interactions expected next week, from 7 new viewers and 4 returning ones."),
    ("the growth percent as a share of viewers", "jump",
     "Falling: about 10.3 interactions expected next week; 175.0% of its viewers came back."),
    ("a genre the item does not have", "jump",
     "Falling: this comedy had 11 interactions in the last week (up from 4, +175.0%); expected about 10.3 next week."),
    # numbers with no role
    ("a bare list of counts", "jump", "Falling: 4, 7, 11; about 10.3 expected next week."),
    ("a number in the headline", "jump", "Falling (1): about 10.3 interactions expected next week."),
]

POSITIVE = [
    ("jump", "Cooling after a jump: about 10.3 interactions expected next week. It had 11 interactions last week, "
             "up from 4."),
    ("jump",
     "Falling: 11 interactions in the last week (+175.0% on the week before, 4); expected about 10.2 next week."),
    ("jump", "Forecast for next week: 10.3 interactions, falling. Its 11 interactions last week are above its window "
             "average of 10.4."),
    ("jump", "It went from 6 to 4 to 11 interactions over the last three weeks. Cooling, with about 10.3 expected "
             "next week."),
    ("rise", "Rising, with about 15.3 expected next week. It is gaining momentum (acceleration +3) after 12 "
             "interactions last week."),
    ("rise", "Rising: about 15.3 interactions expected next week. Last week brought 12 interactions, +50.0% on the "
             "week before."),
    ("flat", "Steady: about 10.2 interactions expected next week. It had 10 interactions last week, the same as the "
             "week before."),
    ("drop", "Falling: about 2.0 interactions expected next week. It had 3 interactions last week, down from 9."),
    ("drop",
     "Falling: about 2.0 interactions expected next week. Its 3 interactions last week are less than half the 9 "
             "of the week before."),
]


@pytest.mark.parametrize(("why", "case", "text"), ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL])
def test_an_adversarial_sentence_is_rejected(why: str, case: str, text: str) -> None:
    signals, forecast = CASES[case]
    assert check_explanation(text, signals, forecast, signals["last_count"], HEAT)[0] is False, why


@pytest.mark.parametrize(("case", "text"), POSITIVE)
def test_a_true_sentence_passes(case: str, text: str) -> None:
    signals, forecast = CASES[case]
    assert check_explanation(text, signals, forecast, signals["last_count"], HEAT) == (True, True)


# --- the item descriptor ------------------------------------------------------------------------------------

DESCRIBED = ("Cooling after a jump: this 1995 action crime thriller had 11 interactions in the last week "
             "(up from 4, +175.0%); expected about 10.3 next week.")


def test_the_items_own_descriptor_passes_with_its_text() -> None:
    assert item_descriptor(HEAT) == "this 1995 action crime thriller"
    assert check_explanation(DESCRIBED, JUMP, 10.34, 11.0, HEAT) == (True, True)


def test_a_descriptor_fails_without_the_items_text() -> None:
    assert check_explanation(DESCRIBED, JUMP, 10.34, 11.0)[0] is False


def test_a_descriptor_with_the_wrong_year_fails() -> None:
    assert check_explanation(DESCRIBED.replace("1995", "1996"), JUMP, 10.34, 11.0, HEAT)[0] is False


def test_a_title_with_direction_words_does_not_confuse_the_checker() -> None:
    text = template_explanation(JUMP, 10.34, WEEK_S, "Falling Down (1993) | Action, Drama")
    assert "Falling Down" not in text
    assert check_explanation(text, JUMP, 10.34, 11.0, "Falling Down (1993) | Action, Drama") == (True, True)


# --- wording that reads true ----------------------------------------------------------------------------------


def test_a_fall_after_a_jump_reads_cooling_after_a_jump() -> None:
    text = template_explanation(JUMP, 10.2, WEEK_S)
    assert text.startswith("Cooling after a jump: it had 11 interactions in the last week (up from 4, +175.0%)"), text


def test_a_steady_forecast_after_a_doubling_reads_steady_after_a_jump() -> None:
    doubling = {**RISE, "last_count": 12.0, "prev_count": 6.0, "velocity": 6.0, "growth_pct": 100.0}
    assert trend_phrase(12.3, 12.0, 6.0) == "steady after a jump"
    assert template_explanation(doubling, 12.3, WEEK_S).startswith("Steady after a jump:")


def test_a_rise_after_a_fall_reads_rebounding() -> None:
    assert template_explanation(DROP, 6.0, WEEK_S).startswith("Rebounding:")


# --- property: every template passes by construction -----------------------------------------------------------

ITEM_TEXTS = ["", HEAT, "Toy Story (1995) | Animation, Children's, Comedy", "12 Angry Men (1957) | Drama",
              "Up Close and Personal (1996) | Drama, Romance", "unkonwn | unknown", "Untitled (1997)"]


def random_histories(rng: np.random.Generator, n: int) -> np.ndarray:
    """Bucket counts with the shapes trends have: quiet, flat, rising, falling, a jump, a drop; zeros too."""
    scale = rng.choice([0.5, 3.0, 15.0, 80.0], size=(n, 1))
    counts = rng.poisson(scale * rng.uniform(0.2, 2.0, size=(n, 8)))
    jumps = rng.random(n) < 0.3
    counts[jumps, -1] = counts[jumps, -1] * rng.integers(2, 5, size=jumps.sum())
    return counts


def random_forecasts(rng: np.random.Generator, last: np.ndarray) -> np.ndarray:
    """Forecasts anywhere, and on the edges of the direction tolerance (5 %, 0.5 interactions)."""
    edge = last * rng.choice([0.95, 1.05], size=len(last)) + rng.normal(0, 1e-3, size=len(last))
    anywhere = np.expm1(np.log1p(last) + rng.normal(0, 0.6, size=len(last)))
    return np.where(rng.random(len(last)) < 0.25, edge, np.maximum(anywhere, rng.uniform(-0.3, 0, size=len(last))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_template_passes_the_strict_checker_on_random_signals(seed: int) -> None:
    rng = np.random.default_rng(seed)
    spec = WindowSpec(slot_s=86_400, bucket_s=WEEK_S, n_buckets=8)
    counts = random_histories(rng, 120)
    batch = FeatureBatch([str(i) for i in range(len(counts))], counts, np.full(len(counts), 99), 100, spec)
    forecasts = random_forecasts(rng, batch.signals["last_count"])
    failures = []
    for i, forecast in enumerate(forecasts):
        signals, item_text = batch.signals_of(i), ITEM_TEXTS[i % len(ITEM_TEXTS)]
        published = round(max(0.0, float(forecast)), 6)   # what a trend v1 record carries
        texts = [rationale(signals, float(forecast), WEEK_S, t, item_text) for t in range(N_TEMPLATES)]
        texts.append(template_explanation(signals, float(forecast), WEEK_S, item_text))
        for text in texts:
            for f in (float(forecast), published):
                if check_explanation(text, signals, f, signals["last_count"], item_text) != (True, True):
                    failures.append((text, signals, f, item_text))
    assert not failures, failures[:3]
