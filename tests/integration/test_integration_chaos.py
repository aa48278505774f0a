"""Chaos: a real worker SIGKILLed three times while 3,000 events stream in loses nothing and
applies nothing twice (audited from the broker: changelog, outputs, committed offsets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.chaos import ChaosReport, chaos_settings, run_chaos

pytestmark = pytest.mark.integration


def test_three_kills_lose_and_duplicate_nothing(broker, tmp_path: Path) -> None:
    settings = chaos_settings(broker.url, tmp_path)
    report = run_chaos(settings, 3_000, 3, n_users=150, seed=1, log_path=tmp_path / "w.log",
                       settle_s=15, deadline_s=150)
    summary = json.dumps(report.to_dict())  # a string: pytest prints it whole
    assert report.events == 3_000 and len(report.kills) == 3, summary
    # the kills hit a live stream: events were still being produced at every kill
    assert all(0 < k.produced_before < 3_000 for k in report.kills), summary
    assert report.events_without_output == 0, summary
    assert report.effects_lost == 0 and report.effects_applied_twice == 0, summary
    assert report.support_mismatches == 0, summary
    assert report.committed_past_unprocessed == 0, summary
    assert report.final_uncommitted == 0, summary
    assert report.worker_tracebacks == 0, summary
    assert report.misplaced_state_records == 0, summary
    assert all(k.first_output_after_s is not None for k in report.kills), summary
    assert report.ok


def test_report_is_not_ok_when_anything_is_off() -> None:
    # The audit's verdict must be able to fail: each defect alone flips it.
    base = ChaosReport(events=10, users=2)
    assert not base.ok  # no kills: nothing was tested
    base.kills.append(object())  # type: ignore[arg-type]
    assert base.ok
    for name in ("events_without_output", "effects_lost", "effects_applied_twice",
                 "support_mismatches", "committed_past_unprocessed", "final_uncommitted",
                 "worker_tracebacks", "misplaced_state_records", "offsets_regressed",
                 "inputs_missing"):
        setattr(base, name, 1)
        assert not base.ok, name
        setattr(base, name, 0)
    # a worker that died and had to be restarted fails a broker-kill run, not a worker-kill run
    base.worker_restarts = 1
    assert base.ok
    base.target = "broker"
    assert not base.ok
