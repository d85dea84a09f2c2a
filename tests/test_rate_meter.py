"""The live page's rates: counters sampled once a second by the worker, rates over the sampled window."""

from __future__ import annotations

from streams.app import Counters
from streams.http_server import RateMeter


def counters(events: int, counted: int) -> Counters:
    return Counters(events=events, counted=counted)


def test_rates_are_counter_deltas_over_the_sampled_window_only():
    meter = RateMeter(window_s=2)
    assert meter.rates() == {}                      # one sample is no rate
    for second, events in enumerate((0, 100, 300, 600)):
        meter.sample(counters(events, events // 2), now_s=float(second))
    rates = meter.rates()                           # the window keeps seconds 1..3: (600 - 100) / 2
    assert rates["events_per_s"] == 250.0 and rates["counted_per_s"] == 125.0 and rates["steps_scored_per_s"] == 0
