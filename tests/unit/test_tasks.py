"""Background-task helpers: the pause every loop takes, and the event-loop lag probe."""

from __future__ import annotations

import asyncio
import time

from polder.common.tasks import wait_for_event, watch_loop_lag


async def test_a_pause_ends_early_when_the_event_is_set() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    assert await wait_for_event(stop, 30.0) is True
    assert time.monotonic() - started < 10.0  # ended by the event, not the 30 s timeout


async def test_a_pause_runs_out_when_nothing_sets_the_event() -> None:
    assert await wait_for_event(asyncio.Event(), 0.01) is False


async def test_loop_lag_sees_a_callback_that_holds_the_loop() -> None:
    stop = asyncio.Event()
    seen: list[float] = []
    watcher = asyncio.create_task(watch_loop_lag(seen.append, stop, every_s=0.01))
    await asyncio.sleep(0.05)

    def hog() -> None:
        time.sleep(0.2)  # a handler that never awaits

    for _ in range(3):  # a sample comes due while a hog runs (unless it was between samples)
        asyncio.get_running_loop().call_soon(hog)
        await asyncio.sleep(0.05)
    stop.set()
    await watcher
    assert seen, "no samples taken"
    assert max(seen) >= 0.15
