"""A periodic data-retention job, run by one replica at a time (the holder of a Postgres
advisory lock), so replicas never thin the same rows twice or race for them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog

from polder.common.db import Pool, leadership
from polder.common.tasks import wait_for_event

log = structlog.get_logger(__name__)

# One pass of a job: thin what is older than the cut; answers the rows thinned.
Job = Callable[[datetime], Awaitable[int]]


def cut_for(now: datetime, retention_h: float) -> datetime:
    """Raw rows received before this instant are past retention."""
    return now - timedelta(hours=retention_h)


async def run(
    pool: Pool,
    lock: str,
    job: Job,
    stop: asyncio.Event,
    *,
    retention_h: float,
    every_s: float,
) -> None:
    """Every ``every_s`` (the first time at once), ``job(cut)`` while this replica leads."""
    async with leadership(pool, lock, stop) as held:
        while held and not stop.is_set():
            try:
                thinned = await job(cut_for(datetime.now(UTC), retention_h))
                if thinned:
                    log.info("retention pass", lock=lock, rows=thinned)
            except Exception:  # the database may be down: the next pass catches up
                log.exception("retention pass failed; retrying at the next interval", lock=lock)
            await wait_for_event(stop, every_s)
