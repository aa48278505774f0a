"""Load: a real worker fed at twice its measured sustainable rate falls behind, then catches up
once the burst stops; nothing is dropped or dead-lettered and its memory is sampled throughout
(the short version of ``kindling load``; the long one is the benchmark)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.load import LoadReport, Sample, load_settings, run_load, worker_rss_mib

pytestmark = pytest.mark.integration


def test_double_rate_burst_drops_nothing_and_lag_recovers(broker, tmp_path: Path) -> None:
    settings = load_settings(broker.url, tmp_path)
    # A 10,000-item catalog: the worker, the broker and the load generator share 2 cores, and
    # with a cheaper event (300 or 2,000 items) the worker outran what the generator could offer
    # beside it (2,724 events/s sustained, 3,946/s offered in one CI run). Here: 1,927 sustained,
    # 3,815 offered.
    report = run_load(settings, factor=2.0, seconds=15.0, saturation_events=4000, users=500,
                      items=10_000, train_steps=20, drain_timeout_s=150.0,
                      log_path=tmp_path / "worker.log")
    summary = {k: v for k, v in report.to_dict().items() if k != "samples"}
    assert report.rate_source == "measured" and report.sustainable_rate > 0, summary
    # The burst was offered at ~2x and the worker could not keep up with it.
    assert report.offered_rate > 1.6 * report.sustainable_rate, summary
    assert report.consume_rate < report.offered_rate, summary
    # It caught up afterwards, every event got its recommendation, none went to the DLQ.
    assert report.lag_recovered and report.lag_zero_after_s is not None, summary
    assert report.events_sent > 0 and report.dropped == 0 and report.unanswered == 0, summary
    assert report.events_with_recommendation == report.events_sent, summary
    assert report.dlq == 0 and report.worker_tracebacks == 0, summary
    # Memory was sampled from the worker process every second of the burst.
    burst = [s for s in report.samples if s.phase == "burst"]
    assert len(burst) >= 13 and all(s.rss_mib for s in burst), summary
    rss = report.rss()
    assert 50 < rss["start_mib"] <= rss["peak_mib"] < 4096, summary
    assert rss["slope_last_half_mib_per_min"] is not None, summary
    assert report.ok


def _report(**changes: object) -> LoadReport:
    report = LoadReport(sustainable_rate=100.0, rate_source="given", factor=2.0, seconds=4.0,
                        events_sent=10, events_with_recommendation=10, lag_recovered=True)
    for name, value in changes.items():
        setattr(report, name, value)
    return report


def test_verdict_fails_on_each_defect() -> None:
    assert _report().ok and _report().dropped == 0
    # Unanswered events are drops only once every offset was committed; before that, unknown.
    assert _report(unanswered=3).dropped == 3
    assert _report(unanswered=3, lag_recovered=False).dropped is None
    for name, value in (("unanswered", 1), ("dlq", 1), ("lag_recovered", False),
                        ("worker_tracebacks", 1), ("events_sent", 0)):
        assert not _report(**{name: value}).ok, name


def test_rss_slope_and_consume_rate_from_samples() -> None:
    report = _report()
    # RSS grows 1 MiB/s in the second half of a 4 s burst: 60 MiB/min; 50 events/s answered.
    report.samples = [Sample(float(t), "burst", 200 * t, 50 * t, 0, 100.0 + max(0, t - 2))
                      for t in range(1, 5)]
    report.samples.append(Sample(5.0, "drain", 800, 400, 0, 90.0))
    rss = report.rss()
    assert rss["slope_last_half_mib_per_min"] == pytest.approx(60.0)
    assert rss["start_mib"] == 100.0 and rss["peak_mib"] == 102.0 and rss["end_mib"] == 90.0
    assert report.consume_rate == pytest.approx(50.0)


def test_rss_of_this_process_is_read_from_proc() -> None:
    import os

    assert worker_rss_mib(os.getpid()) > 10
    assert worker_rss_mib(2**22 + 12345) is None  # no such process
