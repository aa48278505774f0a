"""A recovered worker must not hand the agents a stream partition's records before that partition
is seeked to the group's committed offset (workers/recovery_compat.py, seek_before_resume).

faust-streaming 0.15.3 resumed the partitions and then awaited the seek; a fetcher already running
(it is, whenever the changelogs had records to restore) delivered records from the client's old
position meanwhile: users' later events, which moved their offset watermarks up so that the
events from the committed offset on were taken as redeliveries and never applied (``kindling
chaos``: one event missing in the middle of a user's support set)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.tables.recovery import Recovery
from faust.types import TP

from workers import recovery_compat

SOURCE = {TP("kindling.interactions", 0), TP("kindling.interactions", 1)}
CHANGELOG = {TP("app-supports-changelog", 0), TP("app-supports-changelog", 1)}


class _Consumer:
    """Records the order of the calls; the seek takes a while (a broker round trip for the
    committed offsets), during which a running fetcher may deliver records of resumed
    partitions: ``delivered_before_seek`` collects them."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.resumed: set[TP] = set()
        self.seeked = False
        self.delivered_before_seek: set[TP] = set()

    def assignment(self) -> set[TP]:
        return SOURCE | CHANGELOG

    def resume_partitions(self, tps: set[TP]) -> None:
        self.log.append("resume " + ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)))
        self.resumed |= set(tps)

    async def perform_seek(self) -> None:
        self.log.append("seek start")
        for _ in range(3):  # the fetcher runs between the steps of the seek
            await asyncio.sleep(0)
            if not self.seeked:
                self.delivered_before_seek |= self.resumed & SOURCE
        self.seeked = True
        self.log.append("seek done")

    def resume_flow(self) -> None:
        self.log.append("resume flow")


def _recovery(consumer: _Consumer) -> Any:
    async def wait(coro: Any, timeout: float | None = None) -> None:
        await coro

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    app = SimpleNamespace(
        consumer=consumer, consumer_generation_id=7,
        on_rebalance_complete=SimpleNamespace(send=nothing),
        conf=SimpleNamespace(broker_request_timeout=5.0),
        flow_control=SimpleNamespace(resume=lambda: consumer.log.append("flow control")),
        _fetcher=SimpleNamespace(maybe_start=nothing),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()),
        on_rebalance_end=lambda: consumer.log.append("rebalance end"),
    )
    return SimpleNamespace(
        app=app, log=SimpleNamespace(info=lambda *a, **k: None, dev=lambda *a, **k: None,
                                     warning=lambda *a, **k: None),
        tables=SimpleNamespace(values=lambda: [], on_actives_ready=lambda: None,
                               on_standbys_ready=lambda: None),
        actives_for_table={}, standbys_for_table={}, _set_recovery_ended=lambda: None,
        _is_changelog_tp=lambda tp: tp in CHANGELOG, _wait=wait,
        completed=asyncio.Event(),
    )


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the worker installs (workers/app.py, Kindling); the originals are restored afterwards.
    monkeypatch.setattr(Recovery, "on_recovery_completed", Recovery.on_recovery_completed)
    monkeypatch.setattr(Recovery, "_build_highwaters", Recovery._build_highwaters)
    recovery_compat.install({})


def test_stream_partitions_resume_only_after_the_seek_to_committed_offsets(installed: None) -> None:
    log: list[str] = []
    consumer = _Consumer(log)
    recovery = _recovery(consumer)
    asyncio.run(Recovery.on_recovery_completed(recovery, 7))
    assert consumer.seeked and consumer.resumed == SOURCE, log
    assert not consumer.delivered_before_seek, log  # no record from before the seek reached us
    assert log.index("seek done") < next(i for i, s in enumerate(log) if s.startswith("resume "))
    assert recovery.completed.is_set()
    assert log[-2:] == ["resume flow", "rebalance end"], log


def test_a_newer_generation_resumes_nothing(installed: None) -> None:
    # a rebalance began while the tables were recovering: the next recovery resumes them
    log: list[str] = []
    consumer = _Consumer(log)
    recovery = _recovery(consumer)
    recovery.app.consumer_generation_id = 8
    asyncio.run(Recovery.on_recovery_completed(recovery, 7))
    assert log == [] and not recovery.completed.is_set()


def test_faust_itself_resumes_before_the_seek() -> None:
    # The reason for the patch, pinned: if faust-streaming changes this, the patch can go.
    log: list[str] = []
    consumer = _Consumer(log)
    asyncio.run(recovery_compat._original_completed(_recovery(consumer), 7))  # noqa: SLF001
    assert consumer.delivered_before_seek == SOURCE, log
