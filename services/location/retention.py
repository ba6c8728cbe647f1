"""Raw traces past retention become per-hour H3 resolution-8 cells (``ping_cells``).

Set-based and chunked: each chunk deletes up to ``chunk`` raw rows and adds them to their cells
in one statement (one transaction), so a crash leaves every ping either raw or counted, never
both or neither. The res-8 parent is computed from the stored index cell (resolution ≥ 8) by
the H3 bit layout: resolution field set to 8, digits 9–15 set to 7 ("unused").
"""

from __future__ import annotations

from datetime import datetime

from polder.common.db import Pool
from polder.location.metrics import LocationMetrics

CELL_RESOLUTION = 8
_RES_BITS = 15 << 52
_UNUSED_DIGITS_9_TO_15 = (1 << 21) - 1
_SET8 = (CELL_RESOLUTION << 52) | _UNUSED_DIGITS_9_TO_15


def parent8(cell: int) -> int:
    """The res-8 parent of an H3 cell of resolution 8–15 (what the SQL below computes)."""
    return (cell & ~_RES_BITS) | _SET8


_THIN = f"""
WITH gone AS (
    DELETE FROM pings
     WHERE ctid = ANY(ARRAY(SELECT ctid FROM pings WHERE received_at < $1 LIMIT $2))
    RETURNING driver_id, received_at, cell
), counted AS (
    INSERT INTO ping_cells AS c (driver_id, hour, cell8, pings)
    SELECT driver_id, date_trunc('hour', received_at, 'UTC'),
           (cell & ~{_RES_BITS}::bigint) | {_SET8}::bigint,
           count(*)
      FROM gone GROUP BY 1, 2, 3
    ON CONFLICT (driver_id, hour, cell8) DO UPDATE SET pings = c.pings + EXCLUDED.pings
)
SELECT count(*) FROM gone
"""  # noqa: S608 (constants only)


class TraceRetention:
    def __init__(self, pool: Pool, metrics: LocationMetrics, chunk: int = 50_000) -> None:
        self.pool = pool
        self.metrics = metrics
        self.chunk = chunk

    async def __call__(self, cut: datetime) -> int:
        """Thin every raw ping received before ``cut``; answers how many."""
        total = 0
        while True:
            n: int = await self.pool.fetchval(_THIN, cut, self.chunk)
            total += n
            self.metrics.pings_thinned.inc(n)
            if n < self.chunk:
                return total
