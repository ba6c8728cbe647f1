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


async def watch_loop_lag(
    observe: Callable[[float], None], stop: asyncio.Event, every_s: float = 0.1
) -> None:
    """Sample how long a ready callback waits on this event loop, ``every_s``, until stopped."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        queued = loop.time()
        await asyncio.sleep(0)  # back of the ready queue: run again when everything before ran
        observe(loop.time() - queued)
