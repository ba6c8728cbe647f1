"""Faults on the real infrastructure: Postgres stopped and started under running services.

While the database is down, requests fail fast with 503 and a retry hint (never a hang, never
a 500), /readyz says which dependency is down, and when it is back the same processes serve
again and their consumers catch up — no restart needed, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from polder.billing.main import build_app as build_billing
from polder.common.auth import issue_token
from polder.common.bus import create_topics
from polder.common.envelope import format_time
from polder.common.settings import Settings
from polder.dispatch.main import build_app as build_dispatch
from polder.location.main import build_app as build_location
from polder.runtime.infra import EmbeddedBroker, EmbeddedPostgres, ensure_database, free_port
from tests.conftest import eventually
from tests.support import go_online, serve

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CENTRE = (52.3731, 4.8922)
ORDER = {
    "kind": "ride",
    "pickup": {"lat": CENTRE[0], "lng": CENTRE[1]},
    "dropoff": {"lat": CENTRE[0] + 0.02, "lng": CENTRE[1] + 0.01},
}


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path / "pgdata")
    try:
        yield pg
    finally:
        pg.stop()


@contextlib.asynccontextmanager
async def services(settings: Settings) -> AsyncIterator[tuple[str, str]]:
    async with (
        serve(build_dispatch(settings, matcher="none")) as dispatch,
        serve(build_billing(settings)) as billing,
    ):
        yield dispatch, billing


def auth(settings: Settings, role: str, sub: str) -> dict[str, str]:
    return {"authorization": f"Bearer {issue_token(settings, role, sub)}"}


async def test_postgres_restarted_under_running_services(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    url = await ensure_database(own_postgres.start(), "faults")
    s = settings.model_copy(update={"database_url": url})
    driver, customer = auth(s, "driver", "drv-f"), auth(s, "customer", "cust-f")
    async with services(s) as (dispatch, billing), httpx.AsyncClient(timeout=30) as client:

        async def place(key: str) -> httpx.Response:
            return await client.post(
                f"{dispatch}/v1/orders", json=ORDER, headers={**customer, "Idempotency-Key": key}
            )

        assert (await place("before")).status_code == 201
        r = await client.post(
            f"{dispatch}/v1/drivers/drv-f/status", json={"status": "online"}, headers=driver
        )
        assert r.status_code == 200, r.text

        await asyncio.to_thread(own_postgres.stop)

        for attempt in range(3):  # not once by luck: every request while it is down
            down = await asyncio.wait_for(place(f"during-{attempt}"), timeout=10)
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "unavailable"
            assert int(down.headers["Retry-After"]) >= 1
        statement = await client.get(
            f"{billing}/v1/drivers/drv-f/statement", headers=auth(s, "driver", "drv-f")
        )
        assert statement.status_code == 503, statement.text
        for base in (dispatch, billing):
            ready = await client.get(f"{base}/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"].startswith("failed")

        await asyncio.to_thread(own_postgres.start)

        async def recovered() -> list[int]:
            codes = []
            for base in (dispatch, billing):
                codes.append((await client.get(f"{base}/readyz")).status_code)
            return codes

        await eventually(recovered, until=lambda codes: codes == [200, 200], within=30)
        after = await eventually(
            lambda: place("after"), until=lambda r: r.status_code == 201, within=30
        )
        assert after.json()["status"] == "searching"

        # billing's consumer retried its batch through the outage and caught up: the driver's
        # status change made before the outage is on the statement
        async def covered() -> Any:
            r = await client.get(
                f"{billing}/v1/drivers/drv-f/statement", headers=auth(s, "operator", "ops")
            )
            return r

        r = await eventually(
            covered,
            until=lambda r: r.status_code == 200 and r.json()["time"]["online_s"] > 0,
            within=30,
        )
        assert r.json()["driver_id"] == "drv-f"


async def test_broker_unreachable_ingest_says_retry_and_loses_nothing_acknowledged(
    settings: Settings, tmp_path: Path
) -> None:
    """The broker stops answering (SIGSTOP: what a hung or partitioned broker looks like, and
    unlike a restart of the in-memory embedded broker it keeps what it acknowledged). Ingest
    answers 503 with Retry-After instead of accepting pings it cannot record; when the broker
    answers again the same process records pings again, and every ping it acknowledged,
    before or after, is in the trace."""
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "broker.log")
    bootstrap = await asyncio.to_thread(broker.start)
    s = settings.model_copy(update={"kafka_bootstrap": bootstrap, "publish_timeout_s": 1.0})
    await create_topics(s, embedded=True)
    headers = auth(s, "driver", "drv-b")
    sent: list[str] = []  # every ping's recorded_at, in order
    acknowledged: list[str] = []  # those the service answered 202 for
    try:
        location = build_location(s)
        async with serve(location) as base, httpx.AsyncClient(timeout=30) as client:
            await go_online(s, location, "drv-b")

            async def ping() -> httpx.Response:
                await asyncio.sleep(0.01)  # each ping recorded at a later millisecond
                here = {"lat": CENTRE[0], "lng": CENTRE[1]}  # parked: no jump between pings
                sent.append(format_time(datetime.now(UTC)))
                body = {"pings": [{**here, "recorded_at": sent[-1]}]}
                r = await asyncio.wait_for(  # a hang guard, not a speed target
                    client.post(f"{base}/v1/drivers/drv-b/locations", json=body, headers=headers),
                    timeout=15,
                )
                if r.status_code == 202 and r.json()["accepted"] == 1:
                    acknowledged.append(sent[-1])
                return r

            for _ in range(3):
                r = await ping()
                assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
            broker.pause()
            try:
                for _ in range(2):
                    r = await ping()
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["code"] == "unavailable"
                    assert int(r.headers["Retry-After"]) >= 1
            finally:
                broker.resume()

            async def recorded_again() -> httpx.Response:
                return await ping()

            await eventually(recorded_again, until=lambda r: r.status_code == 202)
            for _ in range(2):
                r = await ping()
                assert r.status_code == 202, r.text
            assert len(acknowledged) == 6

            async def traced() -> set[str]:
                conn = await asyncpg.connect(
                    s.database_url, server_settings={"search_path": s.db_schema("location")}
                )
                try:
                    rows = await conn.fetch(
                        "SELECT recorded_at FROM pings WHERE driver_id = 'drv-b'"
                    )
                    return {format_time(r["recorded_at"]) for r in rows}
                finally:
                    await conn.close()

            # Every acknowledged ping is traced. Pings refused with 503 may be traced too (the
            # broker may append what it had buffered when it answers again, and the driver would
            # retry them anyway); nothing that was never sent is.
            found = await eventually(traced, until=lambda t: set(acknowledged) <= t, within=30)
            assert found <= set(sent)
    finally:
        broker.stop()
