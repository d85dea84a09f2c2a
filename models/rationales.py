"""Grounded rationales for TRAIL: the evidence line and the explanation targets built from trend signals.

There is no teacher LLM, so the explanations TRAIL learns to write are built here from the structured
trend signals of `models.features` (growth %, acceleration, the item's own last / previous / mean bucket
counts) and a forecast, with several phrasings picked by a seeded choice. At inference the forecast is
the model's own, written into an *evidence line* the generator reads after the forecast marker, so the
words and the score agree (Zhang, Chen, Jing, Shen, "Following the TRAIL: Predicting and Explaining
Tomorrow's Hits with a Fine-Tuned LLM", arXiv 2602.04225: explanations grounded in the trend signals,
aligned with the forecast by contrastive learning on positive and negative pairs).

The category (genre) trend is not used: it is not one of the published `signals` (trend v1), so the
checker could not verify a sentence citing it. The item's own year and genres may be named (its
descriptor, `models.wording.item_descriptor`): the checker rebuilds it from the catalogue text.

Every template is a phrasing the strict checker (`models.faithfulness`) binds: each number in its role,
each comparative true of the numbers, the trend phrase (`models.wording.trend_phrase`) true of the
forecast and the last two buckets. So every template passes the checker by construction.

No model code, no I/O here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.wording import (
    GENRE_WORDS,
    change_words,
    direction_of,
    fmt_count,
    fmt_pct,
    fmt_real,
    fmt_signed,
    item_descriptor,
    period_word,
    ratio_words,
    trend_phrase,
)


def before_previous(signals: dict[str, float]) -> float:
    """The count of the bucket before the previous one (velocity - acceleration = prev - prev2)."""
    return round(signals["prev_count"] - signals["velocity"] + signals["acceleration"], 4)


# --- the evidence line: what the generator reads after the forecast ------------------------------------------


def evidence_text(signals: dict[str, float], forecast: float, bucket_s: int) -> str:
    """The structured signals and the forecast as one line the explanation may copy numbers from, ending with
    the trend phrase (forecast direction + recent shape) the explanation should state."""
    period = period_word(bucket_s)
    phrase = trend_phrase(forecast, signals["last_count"], signals["prev_count"])
    return (
        f"last {fmt_count(signals['last_count'])}; before {fmt_count(signals['prev_count'])}; "
        f"before that {fmt_count(before_previous(signals))}; "
        f"change {fmt_pct(signals['growth_pct'])}; acceleration {fmt_signed(signals['acceleration'])}; "
        f"average {fmt_real(signals['mean_count'])}; next {period} {fmt_real(forecast)}, {phrase}."
    )


# --- rationale templates: a head (trend phrase + forecast) and a body (the history that supports it) --------


@dataclass(frozen=True)
class Facts:
    """What a template may say about one item: its signals, the forecast, the period word, the subject."""

    signals: dict[str, float]
    forecast: float
    period: str
    subject: str = "it"          # "it", or the item's descriptor ("this 1997 action thriller")

    @property
    def phrase(self) -> str:
        return trend_phrase(self.forecast, self.signals["last_count"], self.signals["prev_count"])


Phrase = Callable[[Facts], str | None]


def _head_expected(x: Facts) -> str:
    return f"{x.phrase.capitalize()}: about {fmt_real(x.forecast)} interactions expected next {x.period}."


def _head_forecast(x: Facts) -> str:
    return f"Forecast for next {x.period}: {fmt_real(x.forecast)} interactions, {x.phrase}."


def _head_with(x: Facts) -> str:
    return f"{x.phrase.capitalize()}, with about {fmt_real(x.forecast)} expected next {x.period}."


HEADS: tuple[Phrase, ...] = (_head_expected, _head_forecast, _head_with)


def _body_change(x: Facts) -> str:
    return (f"{x.subject[0].upper()}{x.subject[1:]} had {fmt_count(x.signals['last_count'])} interactions "
            f"last {x.period}, {change_words(x.signals, x.period)}.")


def _body_growth(x: Facts) -> str | None:
    if x.signals["prev_count"] <= 0:
        return None
    return (f"Last {x.period} brought {fmt_count(x.signals['last_count'])} interactions, "
            f"{fmt_pct(x.signals['growth_pct'])} on the {x.period} before.")


def _body_average(x: Facts) -> str:
    last, mean = x.signals["last_count"], x.signals["mean_count"]
    relation = "above" if last > mean else "below" if last < mean else "level with"
    return (f"Its {fmt_count(last)} interactions last {x.period} are {relation} its window average "
            f"of {fmt_real(mean)}.")


def _body_momentum(x: Facts) -> str | None:
    acceleration = x.signals["acceleration"]
    if acceleration == 0:
        return None
    trend = "gaining" if acceleration > 0 else "losing"
    return (f"It is {trend} momentum (acceleration {fmt_signed(acceleration)}) "
            f"after {fmt_count(x.signals['last_count'])} interactions last {x.period}.")


def _body_quiet(x: Facts) -> str | None:
    if x.signals["last_count"] > 0:
        return None
    return f"It had no interactions last {x.period}, against a window average of {fmt_real(x.signals['mean_count'])}."


def _body_three_buckets(x: Facts) -> str:
    s = x.signals
    return (f"{x.subject[0].upper()}{x.subject[1:]} went from {fmt_count(before_previous(s))} to "
            f"{fmt_count(s['prev_count'])} to {fmt_count(s['last_count'])} interactions "
            f"over the last three {x.period}s.")


def _body_ratio(x: Facts) -> str | None:
    last, prev = x.signals["last_count"], x.signals["prev_count"]
    words = ratio_words(last, prev)
    if words is None:
        return None
    return (f"Its {fmt_count(last)} interactions last {x.period} are {words} the {fmt_count(prev)} "
            f"of the {x.period} before.")


BODIES: tuple[Phrase, ...] = (_body_change, _body_growth, _body_average, _body_momentum, _body_quiet,
                              _body_three_buckets, _body_ratio)
N_TEMPLATES = len(HEADS) * len(BODIES) * 2   # x2: the body's subject is "it" or the item's descriptor


def rationale(signals: dict[str, float], forecast: float, bucket_s: int, template: int, item_text: str = "") -> str:
    """A grounded one-or-two-sentence explanation of `forecast`: template `template` (mod N_TEMPLATES).

    A body that does not apply to these signals (growth with no previous count, momentum with zero
    acceleration, "no interactions" with some, a ratio that is neither double nor half) falls through to
    the next one, so every call succeeds. Half the templates name the item by its descriptor ("this 1997
    action thriller") when `item_text` has a year or genres.
    """
    wants_descriptor = (template // (len(HEADS) * len(BODIES))) % 2 == 1
    subject = (item_descriptor(item_text) if wants_descriptor and item_text else None) or "it"
    facts = Facts(signals, max(0.0, float(forecast)), period_word(bucket_s), subject)
    head = HEADS[template % len(HEADS)](facts)
    first_body = (template // len(HEADS)) % len(BODIES)
    for step in range(len(BODIES)):
        body = BODIES[(first_body + step) % len(BODIES)](facts)
        if body is not None:
            return f"{body} {head}" if template % 2 else f"{head} {body}"
    return head


def wrong_forecasts(signals: dict[str, float], forecast: float) -> tuple[float, float]:
    """Hard negatives of one item: its forecast with the direction flipped, and with a wrong magnitude.

    Flipped: mirrored around the last count (rising <-> falling; steady becomes rising). Wrong magnitude:
    the change against the last count tripled (or, for steady, a clearly rising value), so the sentence
    cites a number the signals do not support.
    """
    last = signals["last_count"]
    direction = direction_of(forecast, last)
    if direction == "steady" or (direction == "rising" and last < 1.0):
        flipped = last * 1.5 + 2.0 if direction == "steady" else last
    else:
        flipped = max(0.0, 2.0 * last - forecast)
    if direction_of(flipped, last) == direction:   # mirroring could not change it (e.g. tiny counts)
        flipped = last * 1.5 + 2.0 if direction != "rising" else 0.0
    wrong = last + 3.0 * (forecast - last) if direction != "steady" else last * 2.0 + 3.0
    return float(flipped), float(max(0.0, wrong))


def vocabulary_texts(bucket_s: int, seed: int = 0) -> list[str]:
    """Rationales that, together, hold every token the templates can write: each template over random count
    histories (quiet, flat, rising, falling, jumps; forecasts anywhere) with every genre as a descriptor's
    modifier and as its noun, with and without a year. A generator restricted to these tokens
    (`models.trail.TrailConfig.output_ids`) can still write every template.
    """
    rng = np.random.default_rng(seed)
    genres = [g.title() for g in GENRE_WORDS]
    item_texts = [f"Film ({1930 + i % 70}) | {a}, {b}" for i, (a, b) in
                  enumerate((a, b) for a in genres for b in genres if a != b)]
    item_texts += [f"Film | {g}" for g in genres] + ["Film (1995)", ""]
    texts = []
    for item_text in item_texts:
        counts = rng.poisson(rng.choice([0.5, 3.0, 15.0, 80.0]) * rng.uniform(0.2, 2.0, size=3)).astype(float)
        if rng.random() < 0.3:
            counts[-1] *= rng.integers(2, 5)
        prev2, prev, last = counts
        signals = {"last_count": last, "prev_count": prev, "velocity": last - prev,
                   "acceleration": (last - prev) - (prev - prev2),
                   "growth_pct": round(100.0 * (last - prev) / max(prev, 1.0), 4),
                   "mean_count": round(float(np.mean(counts)) * rng.uniform(0.5, 1.5), 4)}
        forecast = float(np.expm1(np.log1p(last) + rng.normal(0.0, 0.6)))
        texts += [rationale(signals, forecast, bucket_s, t, item_text) for t in range(N_TEMPLATES)]
    return texts
