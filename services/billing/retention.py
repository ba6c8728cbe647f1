"""Billing's ping copy past retention: the positions go, what statements need of them stays.

A statement reads a worker's pings for three things (``statements.Statements.compute``): their
server times as signs of life, (server, device) time pairs for the device clock estimate, and
their positions for the engaged distance. The first two move to ``ping_marks`` with the ping's
res-8 cell; the distance is measured once, from the raw positions, into ``ping_legs``. A worker's
pings are thinned only up to a break in its trace (``domain.distance.split_at_break``: more than
``max_gap_ms`` without a ping, where measuring starts afresh anyway), so the legs stored plus the
legs of the pings still held are exactly the legs of the whole trace: a statement is the same
before and after. Pings of a trace that has not broken yet stay until it does (at the end of a
shift), or until ``force_after`` past the cut, when they are thinned as they are.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from polder.billing.domain.distance import JitterFilter, Ping, legs, split_at_break
from polder.billing.metrics import BillingMetrics
from polder.common.db import Pool

_RAW = (
    "SELECT recorded_at_ms, received_at, lat, lng, accuracy_m, cell8 FROM pings "
    "WHERE driver_id = $1 AND recorded_at_ms <= $2 ORDER BY recorded_at_ms"
)


class PingRetention:
    def __init__(
        self,
        pool: Pool,
        metrics: BillingMetrics,
        jitter: JitterFilter | None = None,
        force_after: timedelta = timedelta(days=1),
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.jitter = jitter or JitterFilter()  # the filter statements measure with
        self.force_after = force_after

    async def __call__(self, cut: datetime) -> int:
        """Thin every worker's pings received before ``cut`` (up to a break); answers how many."""
        drivers = await self.pool.fetch(
            "SELECT driver_id, max(recorded_at_ms) AS last_ms FROM pings "
            "WHERE received_at < $1 GROUP BY driver_id",
            cut,
        )
        total = 0
        for d in drivers:
            total += await self._thin(d["driver_id"], d["last_ms"], cut)
        self.metrics.pings_thinned.inc(total)
        return total

    async def _thin(self, driver_id: str, last_old_ms: int, cut: datetime) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            # the driver's pings up to one gap past its newest old one: enough to see a break
            rows = await conn.fetch(_RAW, driver_id, last_old_ms + self.jitter.max_gap_ms + 1)
            movable = next((i for i, r in enumerate(rows) if r["received_at"] >= cut), len(rows))
            pings = [Ping(r["recorded_at_ms"], r["lat"], r["lng"], r["accuracy_m"]) for r in rows]
            n = split_at_break(pings, movable, self.jitter)
            if n == 0 and movable and rows[0]["received_at"] < cut - self.force_after:
                n = movable  # a trace that never breaks is not kept raw for ever
            if n == 0:
                return 0
            thinned = rows[:n]
            received = {r["recorded_at_ms"]: r["received_at"] for r in thinned}
            measured = legs(pings[:n], self.jitter)
            await conn.execute(
                "INSERT INTO ping_legs (driver_id, start_ms, end_ms, distance_m, received_at) "
                "SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::float8[], "
                "$5::timestamptz[]) ON CONFLICT DO NOTHING",
                driver_id,
                [g.start_ms for g in measured],
                [g.end_ms for g in measured],
                [g.distance_m for g in measured],
                [received[g.end_ms] for g in measured],
            )
            await conn.execute(
                "INSERT INTO ping_marks (driver_id, recorded_at_ms, received_at, accuracy_m, "
                "cell8) SELECT $1, * FROM unnest($2::bigint[], $3::timestamptz[], $4::real[], "
                "$5::bigint[]) ON CONFLICT DO NOTHING",
                driver_id,
                *_columns(thinned, ["recorded_at_ms", "received_at", "accuracy_m", "cell8"]),
            )
            await conn.execute(
                "DELETE FROM pings WHERE driver_id = $1 AND recorded_at_ms = ANY($2::bigint[])",
                driver_id,
                [r["recorded_at_ms"] for r in thinned],
            )
            return n


def _columns(rows: list[Any], names: list[str]) -> list[list[Any]]:
    return [[r[name] for r in rows] for name in names]
