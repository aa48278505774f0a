"""``kindling bench produce`` (quick): both ways of sending a micro-batch deliver every record to
the embedded broker, and the report has a CPU and wall figure for each."""

from __future__ import annotations

import pytest

from engine.settings import Settings
from ops.bench_produce import MODES, bench_produce

pytestmark = pytest.mark.integration


def test_quick_run_delivers_every_record_both_ways() -> None:
    report = bench_produce(Settings(), batches=6, batch_size=50, partitions=3)
    assert report["records_sent"] == 2 * (6 * 50 + 10)
    assert report["records_in_topic"] == report["records_sent"]
    for mode in MODES:
        assert report[f"{mode}_cpu_us_per_record"] > 0
        assert report[f"{mode}_wall_ms_per_batch"] > 0
    assert report["cpu_ratio_per_record_over_batched"] > 0
