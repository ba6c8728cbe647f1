"""The location service for real: HTTP and WebSocket ingest through the broker into the index."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest
import websockets
from fastapi import FastAPI

from polder.common.auth import issue_token
from polder.common.db import create_pool
from polder.common.settings import Settings
from polder.location.main import build_app
from tests.conftest import eventually
from tests.support import go_online, on_shift, publish_status, serve

pytestmark = pytest.mark.integration


def ping(
    seconds_ago: float = 1.0, lat: float = 52.37, lng: float = 4.89, **extra: Any
) -> dict[str, Any]:
    t = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return {"lat": lat, "lng": lng, "recorded_at": t.isoformat(), **extra}


class Api:
    """A running location service. Drivers a test posts pings for go online first (a status
    event on polder.driver.events, as dispatch publishes it), unless ``online=False``."""

    def __init__(
        self, base: str, settings: Settings, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        self.base = base
        self.settings = settings
        self.client = client
        self.app = app
        self.known_online: set[str] = set()

    async def online(self, *drivers: str) -> None:
        await go_online(self.settings, self.app, *drivers)
        self.known_online.update(drivers)

    def auth(self, role: str, sub: str) -> dict[str, str]:
        return {"authorization": f"Bearer {issue_token(self.settings, role, sub)}"}

    async def post_pings(
        self,
        driver: str,
        pings: list[dict[str, Any]],
        as_: str | None = None,
        online: bool = True,
    ) -> httpx.Response:
        if online and driver not in self.known_online:
            await self.online(driver)
        return await self.client.post(
            f"{self.base}/v1/drivers/{driver}/locations",
            json={"pings": pings},
            headers=self.auth("driver", as_ or driver),
        )

    async def nearby(self, **params: Any) -> list[dict[str, Any]]:
        r = await self.client.get(
            f"{self.base}/v1/drivers/nearby", params=params, headers=self.auth("operator", "ops")
        )
        assert r.status_code == 200, r.text
        drivers: list[dict[str, Any]] = r.json()["drivers"]
        return drivers


@contextlib.asynccontextmanager
async def start(
    settings: Settings, traces: Literal["process", "inline"] = "inline"
) -> AsyncIterator[Api]:
    app = build_app(settings, traces=traces)
    async with serve(app) as base, httpx.AsyncClient(timeout=10) as client:
        yield Api(base, settings, client, app)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    async with start(settings) as a:
        yield a


async def test_pings_flow_through_the_broker_into_the_index(api: Api) -> None:
    r = await api.post_pings(
        "d1",
        [ping(3, lat=52.3700), ping(2, lat=52.3702, accuracy_m=5, speed_mps=3, heading_deg=90)],
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 2, "rejected": []}
    found = await eventually(
        lambda: api.nearby(lat=52.371, lng=4.89, radius_m=500), until=lambda d: len(d) == 1
    )
    d = found[0]
    assert d["driver_id"] == "d1" and d["lat"] == 52.3702 and d["lng"] == 4.89
    assert 0 < d["distance_m"] < 120 and d["age_s"] >= 0 and len(d["cell"]) == 15


async def test_the_ping_stream_is_produced_with_its_own_linger(settings: Settings) -> None:
    """The location service's producer gathers pings for ``kafka_ping_linger_ms`` (fewer,
    larger batches for the broker), the other services' for ``kafka_linger_ms``."""
    tuned = settings.model_copy(update={"kafka_ping_linger_ms": 40, "kafka_linger_ms": 3})
    async with start(tuned) as a:
        bus = a.app.state.runtime.ingest.bus
        assert bus.linger_ms == 40
        assert bus.producer._message_accumulator._linger_time == 0.040  # noqa: SLF001
        r = await a.post_pings("d-linger", [ping(1)])
        assert r.status_code == 202 and r.json()["accepted"] == 1


async def test_rejected_pings_are_reported_by_index_and_reason(api: Api) -> None:
    first = ping(5)
    r = await api.post_pings("d2", [first, ping(4, lat=91), ping(3, lng=200), ping(-120)])
    assert r.status_code == 202
    assert r.json() == {
        "accepted": 1,
        "rejected": [
            {"index": 1, "reason": "lat_out_of_range"},
            {"index": 2, "reason": "lng_out_of_range"},
            {"index": 3, "reason": "recorded_in_future"},
        ],
    }
    again = await api.post_pings("d2", [first])
    assert again.json()["rejected"] == [{"index": 0, "reason": "stale"}]
    jump = await api.post_pings("d2", [ping(0.5, lat=53.0)])
    assert jump.json()["rejected"] == [{"index": 0, "reason": "impossible_jump"}]
    metrics = (await api.client.get(f"{api.base}/metrics")).text
    assert 'polder_location_pings_rejected_total{reason="lat_out_of_range"} 1.0' in metrics
    assert 'polder_location_pings_rejected_total{reason="stale"} 1.0' in metrics
    assert "polder_location_pings_accepted_total 1.0" in metrics


async def test_a_driver_whose_clock_is_set_back_mid_stream_keeps_being_indexed(api: Api) -> None:
    r = await api.post_pings("d-clock", [ping(4), ping(2)])
    assert r.json() == {"accepted": 2, "rejected": []}
    await eventually(
        lambda: api.nearby(lat=52.37, lng=4.89, radius_m=50), until=lambda d: len(d) == 1
    )
    # the phone's clock goes back 5 minutes: its next batch (newest a second old on its clock)
    # is behind the last one taken, indistinguishable from a retry, and refused...
    back = 300.0
    first = await api.post_pings("d-clock", [ping(back + 2), ping(back + 1)])
    assert first.json()["accepted"] == 0
    assert {x["reason"] for x in first.json()["rejected"]} == {"stale"}
    # ...but the one after it, 2 s later, agrees on the clock's new offset and moved on: taken
    await asyncio.sleep(2)
    moved = [ping(back + 2, lat=52.3701), ping(back + 1, lat=52.3702)]
    fresh = await api.post_pings("d-clock", moved)
    assert fresh.json() == {"accepted": 2, "rejected": []}
    # and indexed at its fresh position, though its device time is older than the last one's
    found = await eventually(
        lambda: api.nearby(lat=52.3702, lng=4.89, radius_m=5), until=lambda d: len(d) == 1
    )
    assert found[0]["driver_id"] == "d-clock" and found[0]["lat"] == 52.3702
    # from there on as usual, on the new clock: a retry is stale, a newer batch is taken
    again = await api.post_pings("d-clock", moved)
    assert again.json()["accepted"] == 0
    assert {x["reason"] for x in again.json()["rejected"]} == {"stale"}
    await asyncio.sleep(1)
    on = await api.post_pings("d-clock", [ping(back + 0.5, lat=52.3703)])
    assert on.json() == {"accepted": 1, "rejected": []}
    await eventually(
        lambda: api.nearby(lat=52.3703, lng=4.89, radius_m=5), until=lambda d: len(d) == 1
    )
    metrics = (await api.client.get(f"{api.base}/metrics")).text
    assert "polder_location_clocks_set_back_total 1.0" in metrics


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"authorization": "Bearer nonsense"}, 401, "unauthorized"),
        ({"authorization": "Basic abc"}, 401, "unauthorized"),
    ],
)
async def test_missing_or_invalid_token_is_401(
    api: Api, headers: dict[str, str], status: int, code: str
) -> None:
    r = await api.client.post(
        f"{api.base}/v1/drivers/d1/locations", json={"pings": [ping()]}, headers=headers
    )
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


async def test_expired_token_is_401(api: Api) -> None:
    token = issue_token(api.settings, "driver", "d1", ttl_s=-10)
    r = await api.client.post(
        f"{api.base}/v1/drivers/d1/locations",
        json={"pings": [ping()]},
        headers={"authorization": f"Bearer {token}"},
    )
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


async def test_only_the_driver_itself_may_post(api: Api) -> None:
    assert (await api.post_pings("d1", [ping()], as_="d2")).status_code == 403
    for role in ("operator", "customer"):
        r = await api.client.post(
            f"{api.base}/v1/drivers/d1/locations",
            json={"pings": [ping()]},
            headers=api.auth(role, "d1"),
        )
        assert r.status_code == 403, role
        assert r.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),
        (b'{"pings": []}', 422, "invalid_request"),
        (
            b'{"pings": [{"lat": "52.3", "lng": 4.9, "recorded_at": "2026-11-29T12:00:00Z"}]}',
            422,
            "invalid_request",
        ),
        (
            b'{"pings": [{"lat": 52.3, "lng": 4.9, "recorded_at": "2026-11-29T12:00:00"}]}',
            422,
            "invalid_request",
        ),
        (
            b'{"pings": [{"lat": 52.3, "lng": 4.9, "recorded_at": "2026-11-29T12:00:00Z",'
            b' "driver_id": "x"}]}',
            422,
            "invalid_request",
        ),
        (
            b'{"pings": [{"lat": 52.3, "lng": 4.9, "recorded_at": "2026-11-29T12:00:00Z"}],'
            b' "status": "online"}',
            422,
            "invalid_request",
        ),
        (b"[1, 2]", 422, "invalid_request"),
    ],
)
async def test_bad_bodies_get_a_clear_error(api: Api, body: bytes, status: int, code: str) -> None:
    r = await api.client.post(
        f"{api.base}/v1/drivers/d1/locations",
        content=body,
        headers={**api.auth("driver", "d1"), "content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


async def test_too_many_pings_and_oversized_bodies_are_refused(api: Api) -> None:
    r = await api.post_pings("d1", [ping(600 - i * 0.5, lat=52.37 + i * 1e-5) for i in range(501)])
    assert r.status_code == 422 and r.json()["error"]["code"] in (
        "invalid_request",
        "too_many_pings",
    )
    big = (
        b'{"pings": ['
        + b",".join([b'{"lat": 52.3, "lng": 4.9, "recorded_at": "2026-11-29T12:00:00Z"}'] * 5000)
        + b"]}"
    )
    r = await api.client.post(
        f"{api.base}/v1/drivers/d1/locations",
        content=big,
        headers={**api.auth("driver", "d1"), "content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


async def test_a_flooding_driver_gets_429_while_others_flow(settings: Settings) -> None:
    limited = settings.model_copy(update={"rate_limit_per_s": 1.0, "rate_limit_burst": 3})
    async with start(limited) as api:
        codes = [
            (await api.post_pings("flood", [ping(10 - i, lat=52.37 + i * 1e-5)])).status_code
            for i in range(5)
        ]
        assert codes[:3] == [202, 202, 202]
        assert codes[3:] == [429, 429]
        r = await api.post_pings("flood", [ping(1)])
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 2
        assert (await api.post_pings("calm", [ping(1)])).status_code == 202


async def test_nearby_and_supply_are_for_operators_only(api: Api) -> None:
    for path in ("/v1/drivers/nearby?lat=52&lng=4", "/v1/supply?res=7"):
        for role in ("driver", "customer"):
            r = await api.client.get(f"{api.base}{path}", headers=api.auth(role, "x"))
            assert r.status_code == 403, (path, role)
        assert (await api.client.get(f"{api.base}{path}")).status_code == 401


async def test_nearby_sorts_by_distance_and_honours_radius_and_limit(api: Api) -> None:
    for i, dlat in enumerate([0.001, 0.003, 0.002, 0.05]):
        assert (await api.post_pings(f"n{i}", [ping(1, lat=52.37 + dlat)])).status_code == 202
    await eventually(
        lambda: api.nearby(lat=52.37, lng=4.89, radius_m=10_000, limit=10),
        until=lambda d: len(d) == 4,
    )
    near = await api.nearby(lat=52.37, lng=4.89, radius_m=500)
    assert [d["driver_id"] for d in near] == ["n0", "n2", "n1"]
    assert [
        d["driver_id"] for d in await api.nearby(lat=52.37, lng=4.89, radius_m=500, limit=2)
    ] == ["n0", "n2"]
    bad = await api.client.get(
        f"{api.base}/v1/drivers/nearby",
        params={"lat": 95, "lng": 4},
        headers=api.auth("operator", "o"),
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


async def test_supply_counts_fresh_drivers_per_cell(api: Api) -> None:
    for i in range(3):
        await api.post_pings(f"s{i}", [ping(1, lat=52.37 + i * 1e-4)])
    await api.post_pings("far", [ping(1, lat=52.6)])

    async def cells() -> list[dict[str, Any]]:
        r = await api.client.get(
            f"{api.base}/v1/supply", params={"res": 7}, headers=api.auth("operator", "o")
        )
        got: list[dict[str, Any]] = r.json()["cells"]
        return got

    found = await eventually(cells, until=lambda c: sum(x["drivers"] for x in c) == 4)
    assert sorted(x["drivers"] for x in found) == [1, 3]
    too_fine = await api.client.get(
        f"{api.base}/v1/supply", params={"res": 12}, headers=api.auth("operator", "o")
    )
    assert too_fine.status_code == 422


async def test_drivers_leave_the_index_after_the_ttl(settings: Settings) -> None:
    async with start(settings.model_copy(update={"location_ttl_s": 1.0})) as api:
        await api.post_pings("ttl", [ping(0.1)])
        await eventually(lambda: api.nearby(lat=52.37, lng=4.89), until=lambda d: len(d) == 1)
        await eventually(lambda: api.nearby(lat=52.37, lng=4.89), until=lambda d: d == [], within=5)


async def test_websocket_frames_are_acknowledged_and_a_bad_frame_closes_nothing(api: Api) -> None:
    ws_base = api.base.replace("http", "ws")
    await api.online("w1", "w2")
    token = issue_token(api.settings, "driver", "w1")
    other = issue_token(api.settings, "driver", "w2")
    async with (
        websockets.connect(f"{ws_base}/v1/drivers/w1/locations/ws?token={token}") as ws,
        websockets.connect(
            f"{ws_base}/v1/drivers/w2/locations/ws",
            additional_headers={"Authorization": f"Bearer {other}"},
        ) as ws2,
    ):
        await ws.send(json.dumps(ping(5)))
        assert json.loads(await ws.recv()) == {"accepted": 1, "rejected": []}
        await ws.send("{broken")
        assert json.loads(await ws.recv())["error"]["code"] == "malformed_json"
        await ws.send(json.dumps({"lat": 1}))
        assert json.loads(await ws.recv())["error"]["code"] == "invalid_request"
        await ws.send(json.dumps([ping(4, lat=52.3701), ping(3, lat=99)]))
        assert json.loads(await ws.recv()) == {
            "accepted": 1,
            "rejected": [{"index": 1, "reason": "lat_out_of_range"}],
        }
        await ws2.send(json.dumps([ping(2, lat=52.38)]))
        assert json.loads(await ws2.recv()) == {"accepted": 1, "rejected": []}
    found = await eventually(
        lambda: api.nearby(lat=52.37, lng=4.89, radius_m=3000), until=lambda d: len(d) == 2
    )
    assert {d["driver_id"] for d in found} == {"w1", "w2"}


@pytest.mark.parametrize("who", ["nobody", "other-driver", "operator"])
async def test_websocket_refuses_wrong_identities(api: Api, who: str) -> None:
    token = {
        "nobody": "not-a-token",
        "other-driver": issue_token(api.settings, "driver", "w9"),
        "operator": issue_token(api.settings, "operator", "w1"),
    }[who]
    url = f"{api.base.replace('http', 'ws')}/v1/drivers/w1/locations/ws?token={token}"
    async with websockets.connect(url) as ws:
        error = json.loads(await ws.recv())["error"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert error["code"] in ("unauthorized", "forbidden")
    assert closed.value.rcvd is not None and closed.value.rcvd.code in (4401, 4403)


async def test_health_readiness_and_metrics(api: Api) -> None:
    assert (await api.client.get(f"{api.base}/healthz")).json() == {"status": "ok"}
    ready = await api.client.get(f"{api.base}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "tasks": "ok"}
    await api.post_pings("m1", [ping(1)])
    await eventually(lambda: api.nearby(lat=52.37, lng=4.89), until=lambda d: len(d) == 1)
    text = (await api.client.get(f"{api.base}/metrics")).text
    for name in (
        "polder_location_ping_to_index_seconds_count",
        "polder_location_batch_size_pings_bucket",
        "polder_location_indexed_drivers",
        "polder_consumer_lag_records",
        'polder_http_requests_total{method="POST",route="/v1/drivers/{driver_id}/locations",status="202"}',
    ):
        assert name in text, name


async def test_the_index_is_rebuilt_from_the_topic_after_a_restart(settings: Settings) -> None:
    async with start(settings) as api:
        await api.post_pings("r1", [ping(10)])
        await eventually(lambda: api.nearby(lat=52.37, lng=4.89), until=lambda d: len(d) == 1)
    async with start(settings) as api:
        found = await eventually(
            lambda: api.nearby(lat=52.37, lng=4.89), until=lambda d: len(d) == 1
        )
        assert found[0]["driver_id"] == "r1"
        # and the restarted service still knows r1's last fix: a replay is stale
        assert (await api.post_pings("r1", [ping(20)])).json()["rejected"][0]["reason"] == "stale"


async def test_unknown_routes_answer_json_404(api: Api) -> None:
    r = await api.client.get(f"{api.base}/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    await asyncio.sleep(0)


async def test_the_trace_process_stores_pings_and_reports_through_the_service(
    settings: Settings,
) -> None:
    """As deployed, the trace writer is a process of its own; its metrics show in ours."""
    async with start(settings, traces="process") as api:
        sent = [ping(3, lat=52.3701), ping(2, lat=52.3702), ping(1, lat=52.3703)]
        assert (await api.post_pings("tr-1", sent)).status_code == 202
        pool = await create_pool(settings.database_url, settings.db_schema("location"))
        try:

            async def stored() -> list[float]:
                rows = await pool.fetch(
                    "SELECT lat FROM pings WHERE driver_id = 'tr-1' ORDER BY recorded_at"
                )
                return [r["lat"] for r in rows]

            assert await eventually(stored, until=lambda r: len(r) == 3, within=30) == [
                52.3701,
                52.3702,
                52.3703,
            ]
        finally:
            await pool.close()

        async def metrics() -> str:
            return (await api.client.get(f"{api.base}/metrics")).text

        text = await eventually(
            metrics, until=lambda t: "polder_location_trace_pings_written_total 3.0" in t
        )
        assert 'polder_consumer_lag_records{consumer="location-traces"' in text
        assert 'polder_consumer_lag_records{consumer="location-index"' in text


async def test_pings_of_a_driver_who_is_not_on_shift_are_refused(api: Api) -> None:
    """No position is taken from a worker who is offline (or never went online); on a break
    the worker is still signed in and is heard. Refusals are counted by reason."""
    never = await api.post_pings("off-1", [ping(2)], online=False)
    assert never.status_code == 409, never.text
    assert never.json()["error"]["code"] == "driver_offline"
    await api.online("off-1")
    assert (await api.post_pings("off-1", [ping(2)])).status_code == 202
    await publish_status(api.settings, "off-1", to="break")
    assert (await api.post_pings("off-1", [ping(1, lat=52.3701)])).status_code == 202
    await publish_status(api.settings, "off-1", to="offline")
    await on_shift(api.app, "off-1", expected=False)
    gone = await api.post_pings("off-1", [ping(0.5, lat=52.3702), ping(0.4, lat=52.3703)])
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "driver_offline"
    metrics = (await api.client.get(f"{api.base}/metrics")).text
    assert 'polder_location_pings_rejected_total{reason="driver_offline"} 3.0' in metrics
    assert "polder_location_pings_accepted_total 2.0" in metrics


async def test_an_offline_driver_gets_an_error_frame_on_the_websocket(api: Api) -> None:
    token = issue_token(api.settings, "driver", "ws-off")
    url = f"{api.base.replace('http', 'ws')}/v1/drivers/ws-off/locations/ws?token={token}"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps(ping(2)))
        assert json.loads(await ws.recv())["error"]["code"] == "driver_offline"
        await api.online("ws-off")  # the socket stays open: the next frame is taken
        await ws.send(json.dumps(ping(1)))
        assert json.loads(await ws.recv()) == {"accepted": 1, "rejected": []}


async def test_every_replica_knows_who_is_on_shift_after_a_restart(settings: Settings) -> None:
    """The statuses are stored in the location schema with the offsets they cover; a replica
    started later loads them and follows the topic from there."""
    async with start(settings) as api:
        await api.online("rs-on", "rs-off")
        await publish_status(settings, "rs-off", to="offline")
        await on_shift(api.app, "rs-off", expected=False)
        pool = await create_pool(settings.database_url, settings.db_schema("location"))
        try:

            async def stored() -> dict[str, str]:
                rows = await pool.fetch("SELECT driver_id, status FROM driver_status")
                return {r["driver_id"]: r["status"] for r in rows}

            await eventually(stored, until=lambda s: s == {"rs-on": "idle", "rs-off": "offline"})
            covered = await pool.fetchval("SELECT sum(next_offset) FROM driver_status_offsets")
            assert covered == 3  # every status event published so far
        finally:
            await pool.close()
    async with start(settings) as second, start(settings) as third:
        for replica in (second, third):
            rt = replica.app.state.runtime
            assert rt.statuses.on_shift("rs-on") and not rt.statuses.on_shift("rs-off")
            r = await replica.post_pings("rs-off", [ping(1)], online=False)
            assert r.status_code == 409
        # a change published now reaches every replica
        await publish_status(settings, "rs-off")
        await on_shift(second.app, "rs-off")
        await on_shift(third.app, "rs-off")


async def test_a_driver_exports_its_own_trace_and_no_one_elses(api: Api) -> None:
    sent = [ping(3, lat=52.3701), ping(2, lat=52.3702)]
    assert (await api.post_pings("ex-1", sent)).status_code == 202
    assert (await api.post_pings("ex-2", [ping(2, lat=52.38)])).status_code == 202
    pool = await create_pool(api.settings.database_url, api.settings.db_schema("location"))
    try:
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        await pool.execute(  # positions past retention, as the job leaves them
            "INSERT INTO ping_cells (driver_id, hour, cell8, pings) VALUES ('ex-1', $1, $2, 7)",
            hour,
            0x88196953B1FFFFF,
        )

        async def stored() -> tuple[int, int]:
            # the trace (the trace writer) and the status (the status consumer group, apart
            # from the in-memory map ingest checks) are written on their own schedules
            pings: int = await pool.fetchval("SELECT count(*) FROM pings")
            status: int = await pool.fetchval(
                "SELECT count(*) FROM driver_status WHERE driver_id = 'ex-1'"
            )
            return pings, status

        await eventually(stored, until=lambda n: n == (3, 1))
    finally:
        await pool.close()
    window = {
        "from": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
        "to": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }
    path = f"{api.base}/v1/drivers/ex-1/export"
    mine = await api.client.get(path, params=window, headers=api.auth("driver", "ex-1"))
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert body["driver_id"] == "ex-1" and body["status"]["status"] == "idle"
    assert [p["lat"] for p in body["pings"]] == [52.3701, 52.3702]
    assert body["cells"] == [{"hour": hour.isoformat(), "cell8": "88196953b1fffff", "pings": 7}]
    ops = await api.client.get(path, params=window, headers=api.auth("operator", "ops"))
    assert ops.status_code == 200 and ops.json() == body
    for role, sub in (("driver", "ex-2"), ("customer", "ex-1")):
        other = await api.client.get(path, params=window, headers=api.auth(role, sub))
        assert other.status_code == 403, (role, other.text)
    too_long = await api.client.get(
        path,
        params={"from": "2026-11-01T00:00:00Z", "to": "2026-11-09T00:00:00Z"},
        headers=api.auth("driver", "ex-1"),
    )
    assert too_long.status_code == 422
    assert too_long.json()["error"]["code"] == "range_too_long"


async def test_stored_offsets_past_the_log_end_mean_the_log_started_over(
    settings: Settings,
) -> None:
    """The embedded broker keeps its log in memory while Postgres keeps driver_status: offsets
    stored by an earlier broker's life are past the new log's end, and the new log is read
    from its beginning instead of skipped."""
    async with start(settings):
        pass  # migrations applied
    pool = await create_pool(settings.database_url, settings.db_schema("location"))
    try:
        topic = settings.topic("polder.driver.events")
        await pool.executemany(
            "INSERT INTO driver_status_offsets (topic, partition, next_offset) "
            "VALUES ($1, $2, 1000) ON CONFLICT (topic, partition) DO UPDATE SET next_offset = 1000",
            [(topic, p) for p in range(8)],
        )
    finally:
        await pool.close()
    await publish_status(settings, "reborn")
    async with start(settings) as api:
        await on_shift(api.app, "reborn")


async def test_a_keyed_batch_retried_gets_its_first_answer_and_records_nothing_again(
    api: Api,
) -> None:
    async def send(pings: list[dict[str, Any]], key: str, driver: str = "dk") -> httpx.Response:
        return await api.client.post(
            f"{api.base}/v1/drivers/{driver}/locations",
            json={"pings": pings},
            headers={**api.auth("driver", driver), "Idempotency-Key": key},
        )

    await api.online("dk")
    await api.online("dk2")
    batch = [ping(3, lat=52.3700), ping(2, lat=52.3701)]
    first = await send(batch, "b-1")
    assert first.status_code == 202 and first.json() == {"accepted": 2, "rejected": []}
    twins = await asyncio.gather(*(send(batch, "b-1") for _ in range(3)))
    assert all((r.status_code, r.json()) == (202, first.json()) for r in twins)
    reused = await send([ping(1, lat=52.3702)], "b-1")
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    # the same batch without its key is a new request: its pings are no longer new
    plain = await api.post_pings("dk", batch)
    assert plain.json()["rejected"] == [
        {"index": 0, "reason": "stale"},
        {"index": 1, "reason": "stale"},
    ]
    # another driver's key of the same name is their own
    assert (await send(batch, "b-1", driver="dk2")).json() == {"accepted": 2, "rejected": []}
    # a request refused before it ran keeps no answer: the key is free for a corrected one
    assert (await send([], "b-2")).status_code == 422
    assert (await send([ping(0.5, lat=52.3702)], "b-2")).json()["accepted"] == 1
    metrics = (await api.client.get(f"{api.base}/metrics")).text
    assert "polder_location_pings_accepted_total 5.0" in metrics  # 2 + 2 + 1, nothing twice
