"""The fetch loop hands a record on without tasks when the conductor's callback does not suspend,
and through mode's ``wait_first`` (a rebalance can still abandon it) when it does
(workers/deliver.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service

from workers.deliver import deliver


class _Counting(Service):
    """A real mode service that counts its ``wait_first`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.wait_firsts = 0

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        self.wait_firsts += 1
        return await super().wait_first(*coros, timeout=timeout)


def test_a_callback_that_does_not_suspend_runs_without_wait_first() -> None:
    async def main() -> tuple[list[int], int, int]:
        service, seen = _Counting(), []
        tasks_before = len(asyncio.all_tasks())

        async def callback(message: int) -> None:
            seen.append(message)

        for message in range(3):
            await deliver(service, callback, message, asyncio.Event())
        return seen, service.wait_firsts, len(asyncio.all_tasks()) - tasks_before

    seen, wait_firsts, new_tasks = asyncio.run(main())
    assert seen == [0, 1, 2] and wait_firsts == 0 and new_tasks == 0


def test_a_callback_that_suspends_finishes_through_wait_first() -> None:
    async def main() -> tuple[list[str], int]:
        service, steps = _Counting(), []
        gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def callback(message: str) -> None:
            steps.append(f"{message}: before")
            steps.append(f"{message}: got {await gate}")
            await asyncio.sleep(0)  # suspends a second time, on a bare yield
            steps.append(f"{message}: after")

        asyncio.get_running_loop().call_later(0.01, gate.set_result, "room")
        await deliver(service, callback, "m", asyncio.Event())
        return steps, service.wait_firsts

    steps, wait_firsts = asyncio.run(main())
    assert steps == ["m: before", "m: got room", "m: after"] and wait_firsts == 1


def test_a_suspended_callback_is_cancelled_where_it_waits_when_the_flow_is_suspended() -> None:
    async def main() -> list[str]:
        service, steps = _Counting(), []
        suspend_flow = asyncio.Event()

        async def callback(message: str) -> None:
            try:
                await asyncio.Event().wait()  # a full stream buffer that never drains
                steps.append("delivered")
            except asyncio.CancelledError:
                steps.append("cancelled")
                raise

        asyncio.get_running_loop().call_later(0.01, suspend_flow.set)
        await asyncio.wait_for(deliver(service, callback, "m", suspend_flow), 5)
        await asyncio.sleep(0)  # the abandoned callback's cancellation runs
        return steps

    assert asyncio.run(main()) == ["cancelled"]


@pytest.mark.parametrize("suspends_first", [False, True])
def test_an_error_in_the_callback_propagates(suspends_first: bool) -> None:
    async def main() -> None:
        async def callback(message: str) -> None:
            if suspends_first:
                await asyncio.sleep(0)
            raise ValueError(f"bad {message}")

        await deliver(_Counting(), callback, "m", asyncio.Event())

    with pytest.raises(ValueError, match="bad m"):
        asyncio.run(main())
