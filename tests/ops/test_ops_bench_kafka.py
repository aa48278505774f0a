"""bench kafka's bare aiokafka echo column end to end on the embedded broker (~20 s), and the
report's ratios and table from a known result."""

from __future__ import annotations

import asyncio

import pytest

from engine.settings import Settings
from ops.bench_kafka import _ratios, bench_kafka, render
from workers.cli import use_event_loop


@pytest.mark.integration
def test_bare_echo_column_through_the_embedded_broker() -> None:
    result = bench_kafka(Settings(), n_events=600, paced_s=0.5, columns=("bare",))
    bare = result["columns"]["bare"]
    assert bare["events"] == 600 and bare["events_per_s"] > 0
    assert bare["consumer_cpu_s"] > 0 and bare["events_per_cpu_s"] > 0
    assert [p["of"] for p in bare["paced"]] == ["0.25", "0.5"]
    for paced, fraction in zip(bare["paced"], (0.25, 0.5), strict=True):
        assert paced["rate"] == pytest.approx(fraction * bare["events_per_s"])
        assert paced["achieved_rate"] == pytest.approx(paced["rate"], rel=0.25)
        assert 0 < paced["p50_ms"] <= paced["p99_ms"]
    assert "| events/s (capacity) |" in render(result)


def test_ratios_compare_columns_and_p99_at_the_same_rate() -> None:
    def column(rate: float, per_cpu: float, paced: list[dict]) -> dict:
        return {"events_per_s": rate, "events_per_cpu_s": per_cpu, "paced": paced}

    cols = {
        "bare": column(8000, 20000, [{"of": "serving/2", "p99_ms": 10.0}]),
        "echo": column(2000, 5000, [{"of": "0.5", "p99_ms": 90.0},
                                    {"of": "serving/2", "p99_ms": 40.0}]),
        "serving": column(1500, 3000, [{"of": "0.5", "p99_ms": 60.0}]),
        "pipeline": column(6000, 6000, []),
        "state": column(1800, 4000, [{"of": "serving/2", "p99_ms": 30.0}]),
    }
    r = _ratios(cols)
    assert r["serving_vs_echo_events_per_s"] == pytest.approx(0.75)
    assert r["serving_vs_echo_events_per_cpu_s"] == pytest.approx(0.6)
    assert r["echo_vs_bare_events_per_s"] == pytest.approx(0.25)
    assert r["serving_vs_pipeline_events_per_cpu_s"] == pytest.approx(0.5)
    # serving's p99 at 50% of its own capacity vs the echoes' at that same rate (not their own)
    assert r["serving_vs_echo_p99_at_serving_half"] == pytest.approx(1.5)
    assert r["serving_vs_bare_p99_at_serving_half"] == pytest.approx(6.0)
    # serving without the model: against the echo, and what the model adds to it
    assert r["state_vs_echo_events_per_s"] == pytest.approx(0.9)
    assert r["serving_vs_state_events_per_cpu_s"] == pytest.approx(0.75)
    assert r["serving_vs_state_p99_at_serving_half"] == pytest.approx(2.0)


def test_unknown_columns_are_refused_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="choose from bare, echo, state, serving, pipeline"):
        bench_kafka(Settings(), columns=("serving", "modelless"))


def test_event_loop_setting_picks_the_policy() -> None:
    import uvloop

    before = asyncio.get_event_loop_policy()
    try:
        use_event_loop("uvloop")
        assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)
        with pytest.raises(ValueError, match="event_loop"):
            use_event_loop("trio")
    finally:
        asyncio.set_event_loop_policy(before)
