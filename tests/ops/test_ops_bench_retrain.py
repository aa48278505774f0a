"""``kindling bench retrain`` helpers: the retrain child is found in /proc, events are assigned
to the baseline / during / after phases by send time around the round."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.settings import Settings
from ops.bench_retrain import GUARD_S, WARMUP_S, RoundWatch, _children, _report


def test_children_finds_only_retrain_children() -> None:
    code = "import time; time.sleep(30)"
    retrain = subprocess.Popen([sys.executable, "-c", code, "retrain"])
    other = subprocess.Popen([sys.executable, "-c", code, "serve"])
    try:
        deadline = time.monotonic() + 10
        while retrain.pid not in _children(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = _children(os.getpid())
        assert retrain.pid in found and other.pid not in found
    finally:
        for p in (retrain, other):
            p.kill()
            p.wait()
    assert retrain.pid not in _children(os.getpid())


def test_report_brackets_the_phases_by_send_time(tmp_path) -> None:
    t0 = 1000.0
    # One event every 0.1 s for 40 s; latency 10 ms, 200 ms inside [20, 30), 50 ms after.
    sent, got = {}, {}
    for i in range(400):
        t = t0 + i / 10
        lat = 0.2 if 20 <= t - t0 < 30 else 0.05 if t - t0 >= 30 else 0.01
        sent[f"e{i}"] = t
        if i != 100:  # one answer missing (a baseline event)
            got[f"e{i}"] = (t + lat, t + lat + 0.001)
    watch = RoundWatch(snapshots={"snapshot-x": t0 + 20.0 + GUARD_S},
                       children={42: [t0 + 21.0 + GUARD_S, t0 + 30.0]})
    outcome = {"promoted": True, "reason": "ok", "seconds": 7.5, "users": 10, "events": 99}
    s = Settings()
    out = _report(s, s, 10.0, 15.0, 5.0, t0, sent, got, watch, outcome, (0.0, 0.0, 0.0),
                  tmp_path)
    base, during, after = (out["phases"][k] for k in ("baseline", "during", "after"))
    assert base["events"] == (20 - WARMUP_S) * 10 - 1 and base["missing"] == 1
    assert during["events"] == 100 and after["events"] == 50
    assert base["p99_ms"] == pytest.approx(10.0, abs=0.01)
    assert during["p50_ms"] == pytest.approx(200.0, abs=0.01)
    assert after["p50_ms"] == pytest.approx(50.0, abs=0.01)
    assert out["p99_ratio"] == pytest.approx(20.0, rel=1e-3)
    assert out["retrain_outcome"] == "promoted" and out["retrain_child_s"] == pytest.approx(
        9.0 - GUARD_S)
    assert out["missing"] == 1 and out["rounds_seen"] == 1
