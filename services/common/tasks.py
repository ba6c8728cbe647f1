"""Background tasks of a service: stopped together, politely first."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


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
