"""A periodic data-retention job, run by one replica at a time (the holder of a Postgres
advisory lock), so replicas never thin the same rows twice or race for them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from polder.common.db import Pool, is_identifier, leadership
from polder.common.tasks import wait_for_event

if TYPE_CHECKING:
    from polder.common.service import Resources

log = structlog.get_logger(__name__)

# One pass of a job: thin what is older than the cut; answers the rows thinned.
Job = Callable[[datetime], Awaitable[int]]


async def delete_before(
    pool: Pool, table: str, stamp: str, cut: datetime, *, chunk: int = 10_000
) -> int:
    """Delete the rows of ``table`` whose ``stamp`` is before ``cut``, oldest first, in ranges of
    ``chunk`` ids; answers how many went. Rows whose ``stamp`` is NULL are never deleted.

    For tables whose ids grow with ``stamp`` (a row's stamp is set at insert, or later in id
    order, as an outbox's ``sent_at``): rows are old below some id and recent (or unstamped)
    above it, so each round looks at the first row of the next range and stops at the first
    recent or unstamped one, never reading the rows it keeps."""
    if not (is_identifier(table) and is_identifier(stamp)):
        raise ValueError(f"not a plain identifier: {table!r}, {stamp!r}")
    first_from = (
        f"SELECT id, {stamp} AS stamp FROM {table} "  # noqa: S608 (names checked)
        "WHERE id >= $1 ORDER BY id LIMIT 1"
    )
    delete = (
        f"DELETE FROM {table} WHERE id >= $1 AND id < $2 "  # noqa: S608 (names checked)
        f"AND {stamp} IS NOT NULL AND {stamp} < $3"
    )
    deleted = 0
    first = await pool.fetchrow(first_from, 0)
    # Unstamped, or recent: what follows is kept.
    while first is not None and first["stamp"] is not None and first["stamp"] < cut:
        lo = first["id"]
        status = await pool.execute(delete, lo, lo + chunk, cut)
        deleted += int(status.split()[-1])
        first = await pool.fetchrow(first_from, lo + chunk)
    return deleted


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


def start(res: Resources, job: Job, *, retention_h: float) -> None:
    """Run ``job`` in this process every ``retention_interval_s`` while it holds the service's
    retention lock (one replica at a time)."""
    settings = res.settings
    res.run(
        run(
            res.pool,
            f"retention:{settings.db_schema(res.service)}",
            job,
            res.stop,
            retention_h=retention_h,
            every_s=settings.retention_interval_s,
        ),
        f"{res.service}-retention",
    )
