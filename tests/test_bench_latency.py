"""`trail bench latency`: a short live run through a real worker on the session broker. Checks the JSON shape,
that steps were observed and that the step trace covers every hop; latencies are reported, never asserted."""

from __future__ import annotations

import orjson
import pytest

from streams.step_trace import STAGES, StepTrace

pytestmark = pytest.mark.broker


def test_step_trace_keeps_the_latest_mark_per_stage_and_only_the_newest_boundaries():
    trace = StepTrace(capacity=3)
    trace.mark(5, "scored", at=1.0)
    trace.mark(5, "scored", at=2.0)            # a later partition: the step waits for the last one
    trace.mark_crossed(5, 9, "stage1_sent", at=3.0, most=4)
    assert trace.as_dict() == {"7": {"stage1_sent": 3.0}, "8": {"stage1_sent": 3.0}, "9": {"stage1_sent": 3.0}}
    trace.mark(2, "emitted", at=4.0)            # older than everything kept: dropped
    assert "2" not in trace.as_dict()
    trace.mark_crossed(None, 12, "stage1_read", at=5.0)   # first sight: that boundary only
    assert list(trace.as_dict()) == ["8", "9", "12"]


def test_bench_latency_observes_steps_and_traces_every_hop(broker, capsys):
    from streams.cli import main

    assert main(["bench", "latency", "--bootstrap", broker, "--rate", "200", "--items", "50", "--duration-s", "22",
                 "--slot-s", "5", "--bucket-s", "10", "--n-buckets", "2", "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "latency" and result["scorer"] == "velocity-baseline"
    assert result["command"].startswith("trail bench latency --rate 200 --items 50 --duration-s 22 --slot-s 5")
    assert result["steps"] >= 2 and result["workers_died"] == []
    assert result["events_sent"] > 0 and result["achieved_rate"] > 150
    assert result["producer_linger_ms"] == 50 and "--producer-linger-ms 50 " in result["command"]
    assert {"n", "p50", "p99", "max"} <= set(result["latency_s"]) and result["latency_s"]["n"] == result["steps"]
    assert {"cpu_model", "logical_cpus", "load_avg_1_5_15"} <= set(result["machine"])
    for step in result["per_step"]:
        assert step["window_end"] % 5000 == 0 and step["records"] > 0
        assert step["latency_s"] >= step["generated_s"] > 0   # a record arrives after it was made, after the end
        assert set(step["hops"]) == set(STAGES)               # one worker: it passed every hop
        assert step["hops"]["stage1_read"] <= step["hops"]["stage1_sent"] <= step["hops"]["emitted"]
    assert set(result["hops_s"]) == set(STAGES)
