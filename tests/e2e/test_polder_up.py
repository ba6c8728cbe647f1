"""`polder up` as a user runs it: a fresh data directory, real processes, Ctrl-C at the end."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from polder.runtime.infra import port_is_free
from tests.e2e.conftest import Up

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_polder_up_runs_the_system_and_stops_everything_it_started(up: Up) -> None:
    up.start()
    driver = {"authorization": f"Bearer {up.token('driver', 'e2e-driver')}"}
    operator = {"authorization": f"Bearer {up.token('operator', 'e2e-ops')}"}
    now = datetime.now(UTC)
    pings = [
        {"lat": 52.3731, "lng": 4.8922, "recorded_at": (now - timedelta(seconds=s)).isoformat()}
        for s in (4, 2)
    ]
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{up.location}/readyz").status_code == 200
        # the driver goes online (dispatch); the location service hears it a moment later
        online = client.post(
            f"{up.dispatch}/v1/drivers/e2e-driver/status", json={"status": "online"}, headers=driver
        )
        assert online.status_code == 200, online.text
        deadline = time.monotonic() + 15
        while True:
            r = client.post(
                f"{up.location}/v1/drivers/e2e-driver/locations",
                json={"pings": pings},
                headers=driver,
            )
            if r.status_code != 409 or time.monotonic() > deadline:
                break
            assert r.json()["error"]["code"] == "driver_offline"
            time.sleep(0.1)
        assert r.status_code == 202 and r.json()["accepted"] == 2
        deadline = time.monotonic() + 15
        drivers: list[dict[str, object]] = []
        while time.monotonic() < deadline and not drivers:
            found = client.get(
                f"{up.location}/v1/drivers/nearby",
                params={"lat": 52.373, "lng": 4.892, "radius_m": 500},
                headers=operator,
            )
            drivers = found.json()["drivers"]
            time.sleep(0.1)
        assert [d["driver_id"] for d in drivers] == ["e2e-driver"]

    async def traces() -> int:
        conn = await asyncpg.connect(up.database_url())
        try:
            return int(await conn.fetchval("SELECT count(*) FROM location.pings"))
        finally:
            await conn.close()

    deadline = time.monotonic() + 30
    while asyncio.run(traces()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert asyncio.run(traces()) == 2

    assert up.stop() == 0
    output = "".join(up.lines)
    assert "Stopped." in output
    assert port_is_free("127.0.0.1", int(up.env["POLDER_BROKER_PORT"]))
    for service in ("LOCATION", "DISPATCH", "BILLING"):
        assert port_is_free("127.0.0.1", int(up.env[f"POLDER_{service}_PORT"]))
    for name in ("location", "dispatch", "billing"):
        assert f"  {name}" in output  # every service was started and announced
    assert not (Path(up.env["POLDER_DATA_DIR"]) / "pgdata" / "postmaster.pid").exists()

    # The data directory persists: a second run finds the first run's traces.
    up.start()
    assert asyncio.run(traces()) == 2
    assert up.stop() == 0
