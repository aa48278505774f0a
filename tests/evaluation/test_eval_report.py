"""report.json shape, report.md, plots and the CLI table."""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.replay import run_replay
from evaluation.report import render_table


def test_report_files_and_shape(tmp_path: Path) -> None:
    report = run_replay(
        None,
        protocol="few-shot",
        models=["random", "popularity", "itemknn"],
        out_dir=tmp_path,
        seed=1,
        support_sizes=(1, 5),
        progress=False,
        synthetic={"n_users": 120, "n_items": 150, "n_clusters": 4, "events_per_user": (6, 20)},
    )
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert set(on_disk) == {"results", "meta", "latency_ms"}
    assert set(on_disk["results"]) == {"random", "popularity", "itemknn"}
    assert set(on_disk["results"]["itemknn"]) == {"1", "5"}
    assert isinstance(on_disk["results"]["itemknn"]["5"]["ndcg@10"], float)
    assert (
        on_disk["results"]["itemknn"]["5"]["ndcg@10"]
        == report["results"]["itemknn"]["5"]["ndcg@10"]
    )
    assert set(on_disk["latency_ms"]["popularity"]) >= {"p50", "p99"}
    assert on_disk["meta"]["seed"] == 1 and on_disk["meta"]["protocol"] == "few-shot"
    md = (tmp_path / "report.md").read_text()
    assert "| itemknn |" in md and "×)" in md and "ndcg_at_10.png" in md
    for png in ("ndcg_at_10.png", "latency.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = render_table(report)
    lines = table.splitlines()
    assert "n=5" in lines[1] and any(line.startswith("itemknn") for line in lines)
    assert "ratio of ndcg@10 to popularity" in table
