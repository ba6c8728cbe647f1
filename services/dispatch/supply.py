"""Supply snapshots from the one active matcher to every API replica's surge model, through
Postgres. Quotes are priced in the API processes, from demand they see and supply only the
matcher counts; sharing the counts in the database (not a file beside one replica's matcher)
makes every replica quote from the same supply, and a replica that starts or restarts reads
the last window back at once."""

from __future__ import annotations

import asyncio
import time

import structlog

from polder.common.db import Pool
from polder.common.tasks import wait_for_event
from polder.dispatch.domain.surge import SurgeModel

log = structlog.get_logger(__name__)


class SupplyWriter:
    """The matcher's side: ``matcher.on_supply``; snapshots are written in the background so
    the batch loop never waits on them."""

    def __init__(self, pool: Pool, keep_s: float) -> None:
        self.pool = pool
        self.keep_s = keep_s
        self._pending: list[tuple[float, dict[str, int]]] = []

    def __call__(self, supply: dict[int, int], at: float) -> None:
        self._pending.append((at, {str(cell): n for cell, n in supply.items()}))

    async def flush(self, now: float) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await self.pool.executemany(
                "INSERT INTO supply_snapshots (at, cells) VALUES ($1, $2)", pending
            )
        await self.pool.execute("DELETE FROM supply_snapshots WHERE at < $1", now - self.keep_s)

    async def run(self, stop: asyncio.Event, every_s: float = 0.5) -> None:
        while not stop.is_set():
            try:
                await self.flush(time.time())
            except Exception:  # the database may be down: snapshots wait for the next round
                log.exception("writing supply snapshots failed; retrying")
            await wait_for_event(stop, every_s)


class SupplyFollower:
    """An API replica's side: feeds every new snapshot into its surge model, starting with
    the last surge window."""

    def __init__(self, pool: Pool, surge: SurgeModel) -> None:
        self.pool = pool
        self.surge = surge
        self._after = time.time() - surge.config.window_s

    async def poll(self) -> int:
        rows = await self.pool.fetch(
            "SELECT at, cells FROM supply_snapshots WHERE at > $1 ORDER BY at", self._after
        )
        for row in rows:
            self.surge.observe_supply({int(c): n for c, n in row["cells"].items()}, row["at"])
            self._after = row["at"]
        return len(rows)

    async def run(self, stop: asyncio.Event, every_s: float = 0.5) -> None:
        while not stop.is_set():
            try:
                await self.poll()
            except Exception:  # the database may be down: quotes use what was seen so far
                log.exception("reading supply snapshots failed; retrying")
            await wait_for_event(stop, every_s)
