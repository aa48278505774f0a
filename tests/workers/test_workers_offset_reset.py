"""The worker's offset-reset warning: once per partition, only far below a watermark."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from workers.app import OFFSET_RESET_GAP, Kindling


def event(partition: int, offset: int) -> SimpleNamespace:
    message = SimpleNamespace(topic="kindling.interactions", partition=partition, offset=offset)
    return SimpleNamespace(message=message)


def test_warns_once_per_partition(caplog: pytest.LogCaptureFixture) -> None:
    worker = SimpleNamespace(_offset_reset_warned=set())
    watermark = 5 * OFFSET_RESET_GAP
    with caplog.at_level(logging.WARNING, logger="kindling.worker"):
        for partition, offset in [(0, 3), (0, 4), (1, 0), (0, 9), (1, 7)]:
            Kindling._warn_offset_reset(worker, event(partition, offset), watermark)
    warnings = [r for r in caplog.records if "recreated" in r.getMessage()]
    assert [(r.partition, r.offset) for r in warnings] == [(0, 3), (1, 0)]
    assert "KINDLING_OFFSET_DEDUP=false" in warnings[0].getMessage()
