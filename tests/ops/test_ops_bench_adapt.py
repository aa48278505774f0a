"""Smoke test of the adaptation benchmark (numbers are only asserted loosely: CI noise)."""

from __future__ import annotations

import json

from ops.bench_adapt import bench_adapt


def test_bench_adapt_report() -> None:
    r = bench_adapt(n_items=2000, support_sizes=(1, 5), inner_steps=(1, 2), batch=32, seconds=0.5)
    json.dumps(r)
    for key in ("p50_ms", "p99_ms", "batched_per_s", "configs", "naive", "speedup"):
        assert key in r
    assert len(r["configs"]) == 4
    assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert r["batched_per_s"] > 0
    # the closed-form path must beat per-user autograd adaptation of an MLP
    assert r["speedup"]["throughput"] > 1.0
