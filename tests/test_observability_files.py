"""Observability pieces that need no broker: the live page's rates, the Prometheus scrape config and the
Grafana dashboard shipped in infra/ (the dashboard's queries also run against a real Prometheus in
tests/test_observability.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from streams.app import Counters
from streams.http_server import RateMeter
from streams.metrics import COUNTERS
from tests.observekit import binary_or_skip, dashboard_exprs

INFRA = Path(__file__).resolve().parent.parent / "infra"


def counters(events: int, counted: int) -> Counters:
    return Counters(events=events, counted=counted)


def test_rates_are_counter_deltas_over_the_sampled_window_only():
    meter = RateMeter(window_s=2)
    assert meter.rates() == {}                      # one sample is no rate
    for second, events in enumerate((0, 100, 300, 600)):
        meter.sample(counters(events, events // 2), now_s=float(second))
    rates = meter.rates()                           # the window keeps seconds 1..3: (600 - 100) / 2
    assert rates["events_per_s"] == 250.0 and rates["counted_per_s"] == 125.0 and rates["steps_scored_per_s"] == 0


def test_prometheus_scrape_config_passes_promtool():
    promtool = binary_or_skip("promtool")
    done = subprocess.run([promtool, "check", "config", str(INFRA / "prometheus.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_charts_every_worker_counter():
    charted = set(re.findall(r"trail_[a-z_]+", " ".join(dashboard_exprs())))
    exposed = {f"{name}_total" for name, _field, _help in COUNTERS} | {"trail_dlq_records_total"}
    assert exposed <= charted, f"counters without a panel: {sorted(exposed - charted)}"
