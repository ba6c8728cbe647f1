"""Keeping a thinned copy of each worker's accepted pings (consumer handler)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import h3.api.basic_int as h3

from polder.billing.metrics import BillingMetrics
from polder.common.bus import Received
from polder.common.db import Pool

CONSUMER = "billing-pings"
REPORT_RESOLUTION = 8


class PingKeeper:
    """Keeps a ping when it is at least ``spacing_ms`` after the last one kept for its driver,
    or older than it (delivered out of order): enough for distance on city streets and for
    signs of life, at a fraction of the rows. Thinning is per process and best-effort; the
    primary key makes replays harmless."""

    def __init__(
        self,
        pool: Pool,
        metrics: BillingMetrics,
        spacing_ms: int,
        retention_s: float | None = None,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.spacing_ms = spacing_ms
        # A replayed ping received longer ago than retention is not stored again as a raw
        # position (the retention job has thinned its neighbours already).
        self.retention_s = retention_s
        self._last_kept: dict[str, int] = {}

    async def __call__(self, records: Sequence[Received]) -> None:
        rows: list[tuple[Any, ...]] = []
        oldest = time.time() - self.retention_s if self.retention_s is not None else None
        for r in records:
            if oldest is not None and r.event.time.timestamp() < oldest:
                continue
            data = r.event.data
            driver = data["driver_id"]
            last = self._last_kept.get(driver, -(10**15))
            for p in sorted(data["pings"], key=lambda p: p["recorded_at_ms"]):
                t = p["recorded_at_ms"]
                if 0 <= t - last < self.spacing_ms:
                    continue
                # A ping older than the last kept one came late (a redelivery out of order):
                # it is kept, not thinned against the future, or a late batch would be lost.
                last = max(last, t)
                cell = h3.latlng_to_cell(p["lat"], p["lng"], REPORT_RESOLUTION)
                rows.append(
                    (driver, t, r.event.time, p["lat"], p["lng"], p.get("accuracy_m"), cell)
                )
            self._last_kept[driver] = last
        if rows:
            await self.pool.execute(
                "INSERT INTO pings (driver_id, recorded_at_ms, received_at, lat, lng, accuracy_m, "
                "cell8) SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], "
                "$4::float8[], $5::float8[], $6::real[], $7::bigint[]) ON CONFLICT DO NOTHING",
                *([row[i] for row in rows] for i in range(7)),
            )
        self.metrics.events_stored.labels("polder.location.pings_recorded.v1").inc(len(records))
