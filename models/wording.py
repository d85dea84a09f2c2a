"""How TRAIL says things: number formats, the period word, the trend vocabulary and the item descriptor.

One vocabulary is shared by the templates that write explanations (`models.rationales`, the baseline
explainer in `models.scoring`) and the checker that verifies them (`models.faithfulness`), so every
phrase a template writes is a phrase the checker knows how to verify.

The trend vocabulary names what a trend does from the recent shape (the last bucket against the one
before) *and* the forecast (against the last bucket): "cooling after a jump" is a forecast fall after
a jump in the last bucket, "rebounding" a forecast rise after a fall. Each phrase states a forecast
direction (rising / falling / steady, `direction_of`) and, for some, a fact about the shape; `trend_phrase`
picks the phrase that is true, `phrase_holds` says whether a given phrase is.

No model code, no I/O here.
"""

from __future__ import annotations

import re

JUMP_RATIO = 1.5      # a "jump": the last bucket at least 1.5x the one before ...
JUMP_MIN_COUNT = 2.0  # ... and at least 2 interactions more (1 -> 2 is not a jump); a "drop" mirrors it


def direction_of(forecast: float, last_count: float, tolerance: float = 0.05) -> str:
    """'rising', 'falling' or 'steady': the forecast against the last bucket, with a relative tolerance."""
    if forecast > last_count * (1 + tolerance) and forecast - last_count >= 0.5:
        return "rising"
    if forecast < last_count * (1 - tolerance) and last_count - forecast >= 0.5:
        return "falling"
    return "steady"


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


# --- the trend vocabulary ---------------------------------------------------------------------------------


def jumped(last: float, prev: float) -> bool:
    """The last bucket jumped against the one before (>= 1.5x and >= 2 more)."""
    return last >= JUMP_RATIO * prev and last - prev >= JUMP_MIN_COUNT


def dropped(last: float, prev: float) -> bool:
    """The last bucket dropped against the one before (<= 1/1.5 of it and >= 2 fewer)."""
    return prev >= JUMP_RATIO * last and prev - last >= JUMP_MIN_COUNT


# phrase -> (the forecast direction it states, what it says about the last bucket against the one before)
TREND_PHRASES: dict[str, tuple[str, str]] = {
    "cooling after a jump": ("falling", "jump"),
    "steady after a jump": ("steady", "jump"),
    "steady after a drop": ("steady", "drop"),
    "rebounding": ("rising", "down"),
    "picking up": ("rising", "not up"),
    "cooling": ("falling", "up"),
    "rising": ("rising", "any"),
    "falling": ("falling", "any"),
    "steady": ("steady", "any"),
}
# longest first, so "steady after a jump" is read as one phrase, not as "steady"
TREND_PHRASE_RE = re.compile(
    r"\b(" + "|".join(re.escape(p) for p in sorted(TREND_PHRASES, key=len, reverse=True)) + r")\b", re.IGNORECASE)


def shape_holds(shape: str, last: float, prev: float) -> bool:
    """Whether the last bucket against the one before has `shape` (a TREND_PHRASES shape)."""
    return {
        "jump": jumped(last, prev),
        "drop": dropped(last, prev),
        "up": last > prev,
        "down": last < prev,
        "not up": last <= prev,
        "any": True,
    }[shape]


def phrase_holds(phrase: str, forecast: float, last: float, prev: float) -> bool:
    """Whether a TREND_PHRASES phrase is true of this forecast and these last two buckets."""
    direction, shape = TREND_PHRASES[phrase.lower()]
    return direction == direction_of(forecast, last) and shape_holds(shape, last, prev)


def trend_phrase(forecast: float, last: float, prev: float) -> str:
    """The most telling true phrase: the forecast direction, qualified by the recent shape where it matters.

    A forecast fall after a jump reads "cooling after a jump", not "falling" beside "+175 %"; a steady
    forecast after a doubling reads "steady after a jump", not a bare "steady".
    """
    direction = direction_of(forecast, last)
    for phrase, (stated, shape) in TREND_PHRASES.items():  # specific phrases come before the plain ones
        if stated == direction and shape_holds(shape, last, prev):
            return phrase
    raise AssertionError(f"no trend phrase for forecast {forecast}, last {last}, prev {prev}")  # "any" always holds


# --- comparatives of the last bucket against the one before -------------------------------------------------


def change_words(signals: dict[str, float], period: str) -> str:
    """The last bucket against the one before: 'up from 4', 'down from 9', 'the same as the week before'."""
    last, prev = signals["last_count"], signals["prev_count"]
    if last > prev:
        return f"up from {fmt_count(prev)}"
    if last < prev:
        return f"down from {fmt_count(prev)}"
    return f"the same as the {period} before"


def ratio_words(last: float, prev: float) -> str | None:
    """'double', 'more than double', 'half' or 'less than half' of the bucket before; None when none fits."""
    if prev <= 0:
        return None
    if abs(last - 2 * prev) <= 0.05 * 2 * prev:
        return "double"
    if last > 2 * prev:
        return "more than double"
    if abs(last - prev / 2) <= 0.05 * prev / 2:
        return "half"
    if last < prev / 2:
        return "less than half"
    return None


# --- the item descriptor ("this 1997 action thriller") -----------------------------------------------------

# ml-100k genres -> (as a modifier, as the noun that ends the phrase)
GENRE_WORDS: dict[str, tuple[str, str]] = {
    "action": ("action", "action film"), "adventure": ("adventure", "adventure film"),
    "animation": ("animated", "animated film"), "children's": ("children's", "children's film"),
    "comedy": ("comedy", "comedy"), "crime": ("crime", "crime film"), "documentary": ("documentary", "documentary"),
    "drama": ("drama", "drama"), "fantasy": ("fantasy", "fantasy film"), "film-noir": ("noir", "film noir"),
    "horror": ("horror", "horror film"), "musical": ("musical", "musical"), "mystery": ("mystery", "mystery"),
    "romance": ("romance", "romance"), "sci-fi": ("sci-fi", "sci-fi film"), "thriller": ("thriller", "thriller"),
    "war": ("war", "war film"), "western": ("western", "western"),
}
YEAR_RE = re.compile(r"\((\d{4})\)\s*$")


def item_descriptor(item_text: str) -> str | None:
    """'this 1997 action thriller' from an item text "Title (year) | Genre, Genre"; None without a known genre.

    Built from the catalogue text alone, so the checker can rebuild it and bind the year and genres to
    the item. At most two genres as modifiers plus the last as the noun: long lists read badly.
    """
    head, _, genre_part = item_text.partition(" | ")
    year = YEAR_RE.search(head.strip())
    genres = [g.strip().lower() for g in genre_part.split(",") if g.strip().lower() in GENRE_WORDS]
    if not genres:   # "this 1996 title" tells a reader little: no descriptor without a genre
        return None
    genres = genres[:2] + genres[-1:] if len(genres) > 3 else genres
    kind = " ".join([GENRE_WORDS[g][0] for g in genres[:-1]] + [GENRE_WORDS[genres[-1]][1]])
    return f"this {year.group(1)} {kind}" if year else f"this {kind}"
