"""Grounded rationales for TRAIL: explanation targets built from trend signals, and the faithfulness checker.

There is no teacher LLM, so the explanations TRAIL learns to write are built here from the structured
trend signals of `models.features` (direction, growth %, acceleration, the item's own last / previous /
mean bucket counts) and a forecast, with several phrasings picked by a seeded choice. At inference the
forecast is the model's own, written into an *evidence line* the generator reads after the forecast
marker, so the words and the score agree (Zhang, Chen, Jing, Shen, "Following the TRAIL: Predicting and
Explaining Tomorrow's Hits with a Fine-Tuned LLM", arXiv 2602.04225: explanations grounded in the trend
signals, aligned with the forecast by contrastive learning on positive and negative pairs).

The category (genre) trend is not used: it is not one of the published `signals` (trend v1), so the
checker could not verify a sentence citing it.

Conventions the checker relies on:
- the forecast direction is said with exactly one of the words ``rising``, ``falling``, ``steady``
  (history is described with other words: up, down, gaining, losing, unchanged);
- every number cited is a signal value or the forecast, formatted as `fmt_count` / `fmt_pct` / `fmt_signed` /
  `fmt_real`; no other numbers (window length, titles) appear.

No model code, no I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from models.scoring import direction_of

DIRECTIONS = ("rising", "falling", "steady")
RELATIVE_TOLERANCE = 0.05          # a cited number may differ from its signal by 5 %
ABSOLUTE_TOLERANCE = 0.05 + 1e-9   # ... or by the rounding of one decimal place

# a number, with an optional explicit sign and an optional percent sign; not part of a word or a decimal
NUMBER_RE = re.compile(r"(?<![\w.])([-+]?)(\d+(?:\.\d+)?)(%?)")
DIRECTION_RE = re.compile(r"\b(rising|falling|steady)\b", re.IGNORECASE)


def period_word(bucket_s: int) -> str:
    """The bucket as a word ('week', 'day', 'hour'); a generic word for other sizes (never a number)."""
    return {7 * 86_400: "week", 86_400: "day", 3_600: "hour"}.get(bucket_s, "period")


def fmt_count(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def fmt_real(x: float) -> str:
    return f"{x:.1f}"


def fmt_signed(x: float) -> str:
    return f"{x:+.0f}" if float(x).is_integer() else f"{x:+.1f}"


def fmt_pct(x: float) -> str:
    return f"{x:+.1f}%"


# --- the evidence line: what the generator reads after the forecast ------------------------------------------


def evidence_text(signals: dict[str, float], forecast: float, bucket_s: int) -> str:
    """The structured signals and the forecast as one line the explanation may copy numbers from."""
    period = period_word(bucket_s)
    direction = direction_of(forecast, signals["last_count"])
    return (
        f"last {fmt_count(signals['last_count'])}; before {fmt_count(signals['prev_count'])}; "
        f"change {fmt_pct(signals['growth_pct'])}; acceleration {fmt_signed(signals['acceleration'])}; "
        f"average {fmt_real(signals['mean_count'])}; next {period} {fmt_real(forecast)}, {direction}."
    )


# --- rationale templates: a head (direction + forecast) and a body (the history that supports it) -------------

Phrase = Callable[[dict[str, float], float, str], str | None]


def _head_expected(s: dict[str, float], f: float, p: str) -> str:
    return f"{direction_of(f, s['last_count']).capitalize()}: about {fmt_real(f)} interactions expected next {p}."


def _head_forecast(s: dict[str, float], f: float, p: str) -> str:
    return f"Forecast for next {p}: {fmt_real(f)} interactions, {direction_of(f, s['last_count'])}."


def _head_predicted(s: dict[str, float], f: float, p: str) -> str:
    return f"Predicted {direction_of(f, s['last_count'])}, to around {fmt_real(f)} next {p}."


HEADS: tuple[Phrase, ...] = (_head_expected, _head_forecast, _head_predicted)


def _change(s: dict[str, float]) -> str:
    last, prev = s["last_count"], s["prev_count"]
    if last > prev:
        return f"up from {fmt_count(prev)}"
    if last < prev:
        return f"down from {fmt_count(prev)}"
    return "unchanged on the one before"


def _body_change(s: dict[str, float], f: float, p: str) -> str:
    return f"It had {fmt_count(s['last_count'])} last {p}, {_change(s)}."


def _body_growth(s: dict[str, float], f: float, p: str) -> str | None:
    if s["prev_count"] <= 0:
        return None
    return (f"Last {p} brought {fmt_count(s['last_count'])} interactions, "
            f"{fmt_pct(s['growth_pct'])} on the {p} before.")


def _body_average(s: dict[str, float], f: float, p: str) -> str:
    last, mean = s["last_count"], s["mean_count"]
    relation = "above" if last > mean else "below" if last < mean else "level with"
    return f"Its {fmt_count(last)} interactions last {p} are {relation} its window average of {fmt_real(mean)}."


def _body_momentum(s: dict[str, float], f: float, p: str) -> str | None:
    acceleration = s["acceleration"]
    if acceleration == 0:
        return None
    trend = "gaining" if acceleration > 0 else "losing"
    return (f"It is {trend} momentum (acceleration {fmt_signed(acceleration)}) "
            f"after {fmt_count(s['last_count'])} last {p}.")


def _body_quiet(s: dict[str, float], f: float, p: str) -> str | None:
    if s["last_count"] > 0:
        return None
    return f"It had no interactions last {p}, against a window average of {fmt_real(s['mean_count'])}."


BODIES: tuple[Phrase, ...] = (_body_change, _body_growth, _body_average, _body_momentum, _body_quiet)
N_TEMPLATES = len(HEADS) * len(BODIES)


def rationale(signals: dict[str, float], forecast: float, bucket_s: int, template: int) -> str:
    """A grounded one-or-two-sentence explanation of `forecast`: template `template` (mod N_TEMPLATES).

    A body that does not apply to these signals (growth with no previous count, momentum with zero
    acceleration, "no interactions" with some) falls through to the next one, so every call succeeds.
    """
    period = period_word(bucket_s)
    head = HEADS[template % len(HEADS)](signals, forecast, period)
    first_body = (template // len(HEADS)) % len(BODIES)
    for step in range(len(BODIES)):
        body = BODIES[(first_body + step) % len(BODIES)](signals, forecast, period)
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


# --- the checker ------------------------------------------------------------------------------------------


def cited_numbers(text: str) -> list[tuple[str, float, bool]]:
    """(sign, |value|, is_percent) of every number in the text, in order."""
    return [(sign, float(value), pct == "%") for sign, value, pct in NUMBER_RE.findall(text)]


def stated_direction(text: str) -> str | None:
    """The first of rising / falling / steady the text says (lower case), or None."""
    found = DIRECTION_RE.search(text)
    return found.group(1).lower() if found else None


def _close(cited: float, value: float) -> bool:
    return abs(cited - value) <= max(RELATIVE_TOLERANCE * abs(value), ABSOLUTE_TOLERANCE)


def number_is_grounded(sign: str, value: float, is_percent: bool, signals: dict[str, float], forecast: float) -> bool:
    """Whether one cited number matches a signal or the forecast within tolerance.

    A percent must match growth_pct; a signed number (``+3``, ``-12.5%``) must match with its sign; an
    unsigned one may match a value or its magnitude ("down 3" for a velocity of -3).
    """
    if is_percent and "growth_pct" in signals:
        candidates = [signals["growth_pct"]]
    else:
        candidates = [*signals.values(), forecast]
    if sign:
        signed = -value if sign == "-" else value
        return any(_close(signed, v) for v in candidates)
    return any(_close(value, v) or _close(value, abs(v)) for v in candidates)


def check_explanation(
    text: str, signals: dict[str, float], forecast: float, last_count: float
) -> tuple[bool, bool]:
    """(faithful, direction_consistent) of one explanation.

    direction_consistent: the first direction word (rising / falling / steady) equals
    `models.scoring.direction_of(forecast, last_count)`; a text with no direction word is inconsistent.
    faithful: direction consistent and every cited number matches a signal or the forecast within 5 %
    (or 0.05 absolute, the rounding of one decimal).
    """
    direction_consistent = stated_direction(text) == direction_of(forecast, last_count)
    numbers_ok = all(
        number_is_grounded(sign, value, is_percent, signals, forecast)
        for sign, value, is_percent in cited_numbers(text)
    )
    return bool(direction_consistent and numbers_ok), bool(direction_consistent)


def template_choices(n: int, seed: int) -> np.ndarray:
    """Seeded template indices for n rationales."""
    return np.random.default_rng(seed).integers(0, N_TEMPLATES, size=n)
