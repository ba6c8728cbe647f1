"""Background tasks of a service: stopped together, politely first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence


async def stop_tasks(tasks: Sequence[asyncio.Task[None]], grace_s: float = 3.0) -> None:
    """Wait ``grace_s`` for tasks that saw the stop event, then cancel the rest.

    Cancelling is safe for consumers: an unfinished batch was not committed, so it is redelivered.
    """
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace_s)
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def wait_for_start(
    ready: asyncio.Event, tasks: Sequence[asyncio.Task[None]], what: str
) -> None:
    """Wait until ``ready`` is set, or fail if any task died first (re-raising its error)."""
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait([waiter, *tasks], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        for t in done:
            t.result()
        raise TimeoutError(f"{what} did not start in 60 s")


async def tasks_alive(tasks: Sequence[asyncio.Task[None]]) -> None:
    """A readiness check: every background task is still running."""
    for t in tasks:
        if t.done():
            raise RuntimeError(f"{t.get_name()} stopped")


async def wait_for_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` has passed; whether it was set. The pause of
    every background loop: it ends at once when the service stops."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=timeout_s)
    return event.is_set()


async def watch_loop_lag(
    observe: Callable[[float], None], stop: asyncio.Event, every_s: float = 0.1
) -> None:
    """Observe, every ``every_s``, how late a timer fires on this event loop: how long the loop
    was held by other work when it came due (what a request or a consumer step waits on top)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + every_s
        if await wait_for_event(stop, every_s):
            return
        observe(max(0.0, loop.time() - due))
