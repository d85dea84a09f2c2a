"""The faithfulness checker: is every number and every comparative in an explanation true, *in its role*?

An explanation is read as a sequence of claims in a small controlled language (the phrasings of
`models.rationales` and `models.scoring`, and the older ones a trained model may still write). Each
claim binds its numbers to the quantity the words say they are (the last bucket, the one before, the
one before that, the change, the percentage change, the acceleration, the window average, the
forecast) and may relate them ("up from", "below its average", "double", "gaining momentum", "no
interactions"); a claim holds when every bound number matches its own quantity within 5 % (or 0.05
absolute, the rounding of one decimal) and every relation agrees with the true quantities. The
trend phrase (rising, cooling after a jump, rebounding... `models.wording.TREND_PHRASES`) must state
the forecast's direction and, where it says one, the true shape of the last two buckets.

Strict by construction: what is left once the known claims, the trend phrases and the item's own
descriptor ("this 1997 action thriller", rebuilt from the catalogue text) are taken out must hold no
number and no word that makes a claim (up, more, doubled, peak, three, ...). A number or claim the
checker cannot bind fails. Genre words outside the item's descriptor fail too.

(PRODUCT.md, "Evaluation protocol": faithfulness = every cited number matches the very quantity the
sentence says it is, every comparative agrees with the numbers, the stated direction matches the
forecast, and an unbound claim fails.) No model code, no I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from models.wording import GENRE_WORDS, TREND_PHRASE_RE, TREND_PHRASES, direction_of, item_descriptor, phrase_holds

RELATIVE_TOLERANCE = 0.05          # a cited number may differ from its quantity by 5 % ...
ABSOLUTE_TOLERANCE = 0.05 + 1e-9   # ... or by the rounding of one decimal place

# a number with an optional sign and percent sign, not part of a word or of a longer number
NUMBER = r"(?<![\w.])[-+]?\d+(?:\.\d+)?%?(?![\w%])"
PERIOD = r"(?:week|day|hour|period)s?"
ROLES = ("last", "prev", "prev2", "change", "change_size", "pct", "accel", "mean", "forecast")

Quantities = dict[str, float]
Words = dict[str, str]


@dataclass(frozen=True)
class Claim:
    """A phrasing the checker can verify: its regex (number groups named after ROLES, word groups not)
    and what its words assert about the true quantities."""

    name: str
    regex: re.Pattern
    holds: Callable[[Quantities, Words], bool]


def _regex(template: str) -> re.Pattern:
    """Compile a claim template: {role} -> a number bound to that role, {period} -> the period word,
    {name:a|b} -> one of the words a, b (captured as `name`)."""
    def expand(m: re.Match) -> str:
        name, _, words = m.group(1).partition(":")
        if name == "period":
            return PERIOD
        if words:
            return f"(?P<{name}>{words})"
        if name not in ROLES:
            raise ValueError(f"claim template {template!r}: {name!r} is not a role {ROLES}")
        return f"(?P<{name}>{NUMBER})"
    return re.compile(r"(?<![\w-])" + re.sub(r"\{(\w+(?::[^}]*)?)\}", expand, template))


def _always(q: Quantities, w: Words) -> bool:
    return True


def _up_down(q: Quantities, w: Words) -> bool:
    return q["last"] > q["prev"] if w["rel"] == "up" else q["last"] < q["prev"]


def _against_mean(q: Quantities, w: Words) -> bool:
    last, mean = q["last"], q["mean"]
    return {"above": last > mean, "below": last < mean, "level with": _close(last, mean)}[w["rel"]]


def _ratio(q: Quantities, w: Words) -> bool:
    last, prev = q["last"], q["prev"]
    return prev > 0 and {
        "double": _close(last, 2 * prev), "more than double": last > 2 * prev,
        "half": _close(last, prev / 2), "less than half": last < prev / 2,
    }[w["rel"]]


_LAST = r"{last}(?: interactions)? (?:in )?(?:the )?last {period}"
# most specific first: a claim's span is taken out before the next claim is looked for
CLAIMS: tuple[Claim, ...] = tuple(Claim(name, _regex(template), holds) for name, template, holds in (
    ("last up/down from prev", _LAST + r"[ ,(]*{rel:up|down} from {prev}(?: the {period} before)?(?:, {pct})?",
     _up_down),
    ("last same as prev", _LAST + r"[ ,(]*(?:the same as|unchanged on) the (?:{period}|one) before",
     lambda q, w: q["last"] == q["prev"]),
    ("last against prev", _LAST + r", against {prev} the {period} before", _always),
    ("last, pct and prev", _LAST + r" \({pct} on the {period} before, {prev}\)", _always),
    ("last vs average", r"{last} interactions last {period} are {rel:above|below|level with} its "
     r"(?:window )?average of {mean}", _against_mean),
    ("last vs prev ratio", r"{last} interactions last {period} are {rel:more than double|double|less than half|half} "
     r"the {prev} of the {period} before", _ratio),
    ("momentum", r"{rel:gaining|losing} momentum \(acceleration {accel}\) after " + _LAST,
     lambda q, w: q["accel"] > 0 if w["rel"] == "gaining" else q["accel"] < 0),
    ("three buckets", r"went from {prev2} to {prev} to {last} interactions over the last three {period}", _always),
    ("growth", r"last {period} brought {last} interactions, {pct} on the {period} before", _always),
    ("no interactions", r"no interactions (?:in )?(?:the )?last {period}", lambda q, w: q["last"] == 0),
    ("pct on prev", r"{pct} on the {period} before(?:, {prev})?", _always),
    ("last", _LAST, _always),
    ("prev", r"{prev}(?: interactions)? the {period} before", _always),
    ("average", r"(?:window )?average of {mean}", _always),
    ("forecast expected", r"(?:about |around )?{forecast}(?: interactions)? expected next {period}", _always),
    ("expected forecast", r"expected (?:about |around )?{forecast}(?: interactions)? next {period}", _always),
    ("forecast for", r"forecast for next {period}: {forecast}(?: interactions)?", _always),
    ("to forecast", r"(?:to )?(?:about|around) {forecast}(?: interactions)? next {period}", _always),
))

# words that make a claim: left over outside a known claim, they are a claim the checker cannot bind
CLAIM_WORDS = re.compile(r"\b(?:" + "|".join((
    r"up", r"down", r"more", r"fewer", r"less", r"lower", r"higher", r"above", r"below", r"over", r"under",
    r"double[ds]?", r"doubling", r"twice", r"triple[ds]?", r"half", r"halved", r"times",
    r"jump\w*", r"drop\w*", r"rebound\w*", r"cool\w*", r"ris(?:e|es|en|ing)", r"rose", r"fall\w*", r"fell",
    r"gain\w*", r"los(?:e|es|t|ing)", r"grow\w*", r"grew", r"shr[iau]nk\w*", r"increas\w*", r"decreas\w*",
    r"climb\w*", r"surg\w*", r"spik\w*", r"peak\w*", r"dip\w*", r"slump\w*", r"plung\w*", r"soar\w*", r"slow\w*",
    r"accelerat\w*", r"decelerat\w*", r"momentum", r"record", r"high\w*", r"low\w*", r"best", r"worst", r"most",
    r"least", r"same", r"unchanged", r"level", r"flat", r"stable", r"steady", r"picking", r"no", r"none", r"zero",
    r"never", r"nothing", r"again", r"still", r"percent", r"one", r"two", r"three", r"four", r"five", r"six",
    r"seven", r"eight", r"nine", r"ten", r"eleven", r"twelve", r"dozen\w*", r"hundred\w*", r"thousand\w*",
    r"first", r"second", r"third",
    *(re.escape(genre) for genre in GENRE_WORDS), r"animated", r"noir", r"film", r"movie",
)) + r")\b")


def _close(cited: float, value: float) -> bool:
    return abs(cited - value) <= max(RELATIVE_TOLERANCE * abs(value), ABSOLUTE_TOLERANCE)


def quantities(signals: dict[str, float], forecast: float, last_count: float) -> Quantities:
    """Every quantity a claim may cite, from the published signals and the forecast."""
    last = float(signals.get("last_count", last_count))
    prev = float(signals["prev_count"])
    velocity = float(signals.get("velocity", last - prev))
    acceleration = float(signals.get("acceleration", 0.0))
    return {
        "last": last, "prev": prev,
        "prev2": round(prev - velocity + acceleration, 4),  # velocity - acceleration = prev - prev2
        "change": velocity, "change_size": abs(velocity), "pct": float(signals["growth_pct"]),
        "accel": acceleration, "mean": float(signals["mean_count"]), "forecast": max(0.0, float(forecast)),
    }


def number_matches(cited: str, role: str, q: Quantities) -> bool:
    """Whether one cited number ("12", "+3", "-12.5%") is its role's quantity within tolerance.

    A percent binds only to the percentage change and the percentage change only to a percent; a signed
    number keeps its sign, so "-50.0%" never matches a +50 % change.
    """
    is_percent = cited.endswith("%")
    if is_percent != (role == "pct"):
        return False
    return _close(float(cited.rstrip("%")), q[role])


def claim_holds(claim: Claim, found: re.Match, q: Quantities) -> bool:
    """Whether one found claim is true: its numbers match their roles and its words agree with the numbers."""
    groups = {name: value for name, value in found.groupdict().items() if value is not None}
    numbers_ok = all(number_matches(value, name, q) for name, value in groups.items() if name in ROLES)
    return numbers_ok and claim.holds(q, {k: v for k, v in groups.items() if k not in ROLES})


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    """The text with the given spans replaced by spaces (so neighbours never join into a new word)."""
    chars = list(text)
    for start, end in spans:
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def bound_claims(text: str, q: Quantities) -> tuple[bool, str]:
    """(all known claims found hold, the text with them taken out)."""
    ok = True
    for claim in CLAIMS:
        found = list(claim.regex.finditer(text))
        ok = ok and all(claim_holds(claim, m, q) for m in found)
        text = _blank(text, [m.span() for m in found])
    return ok, text


def stated_phrases(text: str) -> list[str]:
    """The trend phrases the text states, lower case, in order (see models.wording.TREND_PHRASES)."""
    return [m.group(1).lower() for m in TREND_PHRASE_RE.finditer(text)]


def stated_direction(text: str) -> str | None:
    """The forecast direction (rising / falling / steady) of the first trend phrase, or None."""
    phrases = stated_phrases(text)
    return TREND_PHRASES[phrases[0]][0] if phrases else None


def unbound_residue(text: str) -> bool:
    """Whether what is left holds a number or a claim word: something said that no known claim binds."""
    return bool(re.search(r"\d", text) or CLAIM_WORDS.search(text))


def check_explanation(
    text: str, signals: dict[str, float], forecast: float, last_count: float, item_text: str = ""
) -> tuple[bool, bool]:
    """(faithful, direction_consistent) of one explanation.

    direction_consistent: the text states at least one trend phrase and every one states the forecast's
    direction, `direction_of(max(0, forecast), last_count)`. faithful: direction consistent, every trend phrase
    true of the last two buckets, every known claim true in its role, and nothing unbound left over.
    `item_text` is the item's catalogue text ("Title (year) | genres"): only with it may the text describe
    the item ("this 1997 action thriller").
    """
    q = quantities(signals, forecast, last_count)
    rest = " ".join(text.lower().split())
    descriptor = item_descriptor(item_text) if item_text else None
    if descriptor:
        rest = re.sub(rf"(?<![\w-]){re.escape(descriptor)}(?![\w-])", " ", rest)
    claims_ok, rest = bound_claims(rest, q)
    phrases = stated_phrases(rest)
    direction = direction_of(q["forecast"], last_count)   # the forecast as published: clipped at 0
    direction_consistent = bool(phrases) and all(TREND_PHRASES[p][0] == direction for p in phrases)
    phrases_ok = all(phrase_holds(p, q["forecast"], q["last"], q["prev"]) for p in phrases)
    rest = TREND_PHRASE_RE.sub(" ", rest)
    faithful = direction_consistent and phrases_ok and claims_ok and not unbound_residue(rest)
    return bool(faithful), bool(direction_consistent)
