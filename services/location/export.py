"""A worker's own data as the location service holds it, for the worker to take away: the raw
trace within retention, the res-8 cells of older positions, and the last status heard."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import h3.api.basic_int as h3

from polder.common.db import Pool

MAX_SPAN = timedelta(days=7)  # a week of a busy worker's trace is ~200 000 pings


async def export(
    pool: Pool, driver_id: str, start: datetime, end: datetime, resolution: int
) -> dict[str, Any]:
    """``resolution``: the index's, for each ping's H3 cell."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        pings = await conn.fetch(
            "SELECT recorded_at, received_at, lat, lng, accuracy_m, speed_mps, "
            "heading_deg FROM pings WHERE driver_id = $1 AND recorded_at >= $2 "
            "AND recorded_at < $3 ORDER BY recorded_at",
            driver_id,
            start,
            end,
        )
        cells = await conn.fetch(
            "SELECT hour, cell8, pings FROM ping_cells WHERE driver_id = $1 AND hour >= $2 "
            "AND hour < $3 ORDER BY hour, cell8",
            driver_id,
            start,
            end,
        )
        status = await conn.fetchrow(
            "SELECT status, changed_at FROM driver_status WHERE driver_id = $1", driver_id
        )
    return {
        "driver_id": driver_id,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "status": (
            {"status": status["status"], "changed_at": status["changed_at"].isoformat()}
            if status
            else None
        ),
        "pings": [
            {
                "recorded_at": r["recorded_at"].isoformat(),
                "received_at": r["received_at"].isoformat(),
                "lat": r["lat"],
                "lng": r["lng"],
                "cell": f"{h3.latlng_to_cell(r['lat'], r['lng'], resolution):x}",
                "accuracy_m": r["accuracy_m"],
                "speed_mps": r["speed_mps"],
                "heading_deg": r["heading_deg"],
            }
            for r in pings
        ],
        "cells": [
            {"hour": r["hour"].isoformat(), "cell8": f"{r['cell8']:x}", "pings": r["pings"]}
            for r in cells
        ],
    }
