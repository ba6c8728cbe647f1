"""Raw traces past retention become per-hour H3 resolution-8 cells (``ping_cells``).

Chunked: each chunk of stored batches is deleted and its pings added to their cells in one
transaction. A ping's cell is the res-8 parent of its cell at the index's resolution (≥ 8), by
the H3 bit layout: resolution field set to 8, digits 9–15 set to 7 ("unused").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import h3.api.basic_int as h3
import orjson

from polder.common.db import Pool
from polder.location.metrics import LocationMetrics

CELL_RESOLUTION = 8
_RES_BITS = 15 << 52
_UNUSED_DIGITS_9_TO_15 = (1 << 21) - 1
_SET8 = (CELL_RESOLUTION << 52) | _UNUSED_DIGITS_9_TO_15


def parent8(cell: int) -> int:
    """The res-8 parent of an H3 cell of resolution 8–15."""
    return (cell & ~_RES_BITS) | _SET8


# A chunk of the oldest batches received before the cut, deleted and handed back.
_TAKE = """
DELETE FROM trace_batches
 WHERE event_id = ANY(ARRAY(
       SELECT event_id FROM trace_batches WHERE received_at < $1
        ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED))
RETURNING event_id, driver_id, received_at, pings::text AS pings
"""

_COUNT = """
INSERT INTO ping_cells AS c (driver_id, hour, cell8, pings)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::integer[])
ON CONFLICT (driver_id, hour, cell8) DO UPDATE SET pings = c.pings + EXCLUDED.pings
"""


class TraceRetention:
    """``chunk`` batches per transaction: they are deleted and their pings counted into
    ``ping_cells`` in one transaction, so a crash leaves every ping raw or counted, never both
    or neither. A ping stored twice (sent again in another request) is counted once, in the
    hour of its first copy, when both copies are thinned in one chunk; copies thinned in two
    chunks or passes are counted twice, and the view shows the later copy in between. Only a
    retried batch whose first answer was lost makes such copies, and it is retried within
    seconds, so the two are almost always in one chunk."""

    def __init__(
        self, pool: Pool, metrics: LocationMetrics, resolution: int, chunk: int = 2_000
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.resolution = resolution  # the index's: cells are the parents of its cells
        self.chunk = chunk

    async def __call__(self, cut: datetime) -> int:
        """Thin every raw ping received before ``cut``; answers how many."""
        total = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                batches = await conn.fetch(_TAKE, cut, self.chunk)
                counts = cell_counts(
                    [
                        (b["driver_id"], b["received_at"], b["pings"])
                        for b in sorted(batches, key=lambda b: (b["received_at"], b["event_id"]))
                    ],
                    self.resolution,
                )
                if counts:
                    keys = list(counts)
                    await conn.execute(
                        _COUNT,
                        [k[0] for k in keys],
                        [k[1] for k in keys],
                        [k[2] for k in keys],
                        [counts[k] for k in keys],
                    )
            n = sum(counts.values())
            total += n
            self.metrics.pings_thinned.inc(n)
            if len(batches) < self.chunk:
                return total


def cell_counts(
    batches: Sequence[tuple[str, datetime, str]], resolution: int
) -> Counter[tuple[str, datetime, int]]:
    """Pings per (driver, UTC hour received, res-8 cell) of stored batches (driver, received_at,
    pings JSON), each (driver, recorded_at) once."""
    counts: Counter[tuple[str, datetime, int]] = Counter()
    seen: set[tuple[str, int]] = set()
    for driver, received_at, pings in batches:
        hour = received_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        for p in orjson.loads(pings):
            if (driver, p["recorded_at_ms"]) in seen:
                continue
            seen.add((driver, p["recorded_at_ms"]))
            cell = h3.latlng_to_cell(p["lat"], p["lng"], resolution)
            counts[(driver, hour, parent8(cell))] += 1
    return counts
