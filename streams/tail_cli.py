"""Kept only for `streams.chaos`, which imports `first_sightings` from here and is being changed for issue 10
right now; the owner is `streams.trend_reader` and `trail tail` is `streams.cli.tail`. Delete this module once
`streams.chaos` imports `streams.trend_reader`."""

from streams.trend_reader import first_sightings

__all__ = ["first_sightings"]
