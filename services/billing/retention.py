"""Billing's ping copy past retention: the positions go, what statements need of them stays.

A statement reads a worker's pings for three things (``statements.Statements.compute``): their
server times as signs of life, (server, device) time pairs for the device clock estimate, and
their positions for the engaged distance. The first two move to ``ping_marks`` with the ping's
res-8 cell; the distance is measured once, from the raw positions, into ``ping_legs``. Legs are
measured as statements measure them: on pings placed on the server's clock batch by batch
(``domain.distance.batch_clock_offsets_ms``, from the same neighbouring batches a statement
reads, marks included), and stored on the server's clock. A worker's pings are thinned only up
to a break in its placed trace (``domain.distance.split_at_break``: more than ``max_gap_ms``
without a ping, where measuring starts afresh anyway), so the legs stored plus the legs of the
pings still held are exactly the legs of the whole trace: a statement is the same before and
after. Pings of a trace that has not broken yet stay until it does (at the end of a shift), or
until ``force_after`` past the cut, when they are thinned as they are.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from polder.billing.domain.distance import (
    ClockEstimate,
    JitterFilter,
    Ping,
    batch_clock_offsets_ms,
    legs,
    on_server_clock,
    split_at_break,
)
from polder.billing.metrics import BillingMetrics
from polder.common.db import Pool

# A worker's stored pings, raw and marks (no position), received in a range.
_ROWS = (
    "SELECT recorded_at_ms, floor(extract(epoch FROM received_at) * 1000)::bigint AS received_ms, "
    "received_at, lat, lng, accuracy_m, cell8 FROM pings "
    "WHERE driver_id = $1 AND received_at >= $2 AND received_at < $3 "
    "UNION ALL "
    "SELECT recorded_at_ms, floor(extract(epoch FROM received_at) * 1000)::bigint, "
    "received_at, NULL, NULL, accuracy_m, cell8 FROM ping_marks "
    "WHERE driver_id = $1 AND received_at >= $2 AND received_at < $3"
)


class PingRetention:
    def __init__(
        self,
        pool: Pool,
        metrics: BillingMetrics,
        jitter: JitterFilter | None = None,
        force_after: timedelta = timedelta(days=1),
        clock: ClockEstimate | None = None,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.jitter = jitter or JitterFilter()  # the filter statements measure with
        self.force_after = force_after
        self.clock = clock or ClockEstimate()  # the estimate statements place pings with
        # A batch's offset depends on its neighbours up to ``neighbours`` batches away, each at
        # most ``max_gap_ms`` after the one before: they are all received within this reach.
        self.reach = timedelta(milliseconds=self.clock.neighbours * self.clock.max_gap_ms)

    async def __call__(self, cut: datetime) -> int:
        """Thin every worker's pings received before ``cut`` (up to a break); answers how many."""
        drivers = await self.pool.fetch(
            "SELECT driver_id, min(received_at) AS first FROM pings "
            "WHERE received_at < $1 GROUP BY driver_id",
            cut,
        )
        total = 0
        for d in drivers:
            total += await self._thin(d["driver_id"], d["first"], cut)
        self.metrics.pings_thinned.inc(total)
        return total

    async def _thin(self, driver_id: str, first: datetime, cut: datetime) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            # the driver's pings from its oldest raw one to a while past the cut, and the
            # marks before them: every neighbour the clock estimate looks at, and enough of the
            # trace after the cut to see a break
            rows = await conn.fetch(_ROWS, driver_id, first - self.reach, cut + self.reach)
            offsets = batch_clock_offsets_ms(
                ((r["received_ms"], r["recorded_at_ms"]) for r in rows), self.clock
            )
            raw = [r for r in rows if r["lat"] is not None]
            placed = on_server_clock(
                (
                    (
                        r["received_ms"],
                        Ping(r["recorded_at_ms"], r["lat"], r["lng"], r["accuracy_m"]),
                    )
                    for r in raw
                ),
                offsets,
            )
            order = sorted(
                range(len(raw)), key=lambda i: (placed[i].recorded_at_ms, raw[i]["recorded_at_ms"])
            )
            raw = [raw[i] for i in order]
            pings = [placed[i] for i in order]
            movable = next((i for i, r in enumerate(raw) if r["received_at"] >= cut), len(raw))
            n = split_at_break(pings, movable, self.jitter)
            if n == 0 and movable and raw[0]["received_at"] < cut - self.force_after:
                n = movable  # a trace that never breaks is not kept raw for ever
            if n == 0:
                return 0
            thinned = raw[:n]
            received = {
                p.recorded_at_ms: r["received_at"] for p, r in zip(pings[:n], thinned, strict=True)
            }
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
