"""Hand one fetched record to Faust's conductor without four tasks per record.

faust-streaming 0.15.3's fetch loop hands each record on with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: mode's ``wait_first``
wraps the callback, the ``suspend_flow`` wait and the service's ``stopped`` and ``crashed`` waits
in four tasks, waits for the first with ``asyncio.wait`` and cancels the rest. So a rebalance
(``suspend_flow`` set) can abandon a callback that is blocked, e.g. on a full stream buffer. But
the callback (the conductor's ``on_message``: flow control, decode, ``put_nowait`` into each
subscribed channel's queue) almost always finishes without ever suspending, and then the four
tasks are pure cost: ~8% of a serving worker's main-thread CPU in a py-spy profile, the same
per record in the Faust echo.

:func:`deliver` runs the callback's first step in the fetch loop's own task. If it finishes
there, nothing else is needed: no other task ran in between, so nothing could have suspended the
flow. If it suspends instead, the rest of the callback (the same coroutine, resumed where it
stopped) goes through ``wait_first`` exactly as before, so a rebalance still cancels it where it
waits. The fetch loop keeps yielding to the event loop every ``yield_every`` records, as Faust's
own loop does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any


class _Rest:
    """The rest of a coroutine that was stepped once outside any task and yielded ``first``:
    awaiting this resumes it where it stopped (what ``await`` does, from its second step on)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation included: hand it to the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def deliver(service: Any, callback: Callable[[Any], Awaitable[None]], message: Any,
                  suspend_flow: Any) -> None:
    """``await service.wait_first(callback(message), suspend_flow.wait())``, without its tasks
    when the callback finishes without suspending (see the module's docstring). An exception
    from the callback propagates, as from ``wait_first``."""
    coro = callback(message)
    try:
        first = coro.send(None)  # type: ignore[attr-defined]
    except StopIteration:
        return
    await service.wait_first(_Rest(coro, first), suspend_flow.wait())  # wait_first makes it a task

