"""``kindling worker`` whose consumer fetches from past the group's committed offset: run by
``test_integration_gap_guard.py`` as ``python -m skipping_worker`` (this folder on PYTHONPATH).

``SKIPPING_WORKER="TOPIC:PARTITION:COMMITTED:SKIP,..."``: whenever Faust seeks the partition to
the committed offset ``COMMITTED``, the aiokafka client is then sought to ``COMMITTED + SKIP``
behind Faust's back (Faust's read offset still says ``COMMITTED``), before the partition's first
records are fetched: the position a restarted worker was found at in ``kindling chaos``."""

from __future__ import annotations

import os
import sys
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

from workers.cli import main

_thread_cls = faust_aiokafka.AIOKafkaConsumerThread
_original = _thread_cls.seek_to_committed


def _skips(spec: str) -> dict[tuple[str, int], tuple[int, int]]:
    out = {}
    for entry in filter(None, spec.split(",")):
        topic, partition, committed, skip = entry.rsplit(":", 3)
        out[(topic, int(partition))] = (int(committed), int(skip))
    return out


SKIPS = _skips(os.environ.get("SKIPPING_WORKER", ""))


async def _move(client: Any, moves: dict[Any, int]) -> None:
    for tp, offset in moves.items():
        client.seek(tp, offset)


async def _seek_to_committed(self: Any) -> Any:
    committed = await _original(self)
    moves = {}
    for tp, offset in committed.items():
        at, skip = SKIPS.get((tp.topic, tp.partition), (None, 0))
        if at is not None and offset == at:
            moves[tp] = offset + skip
    if moves:
        await self.call_thread(_move, self._ensure_consumer(), moves)
        for tp, offset in moves.items():
            print(f"skipping_worker: {tp.topic}[{tp.partition}] committed {committed[tp]}, "
                  f"now fetched from {offset}", flush=True)
    return committed


_thread_cls.seek_to_committed = _seek_to_committed

if __name__ == "__main__":
    sys.exit(main(["worker"]))
