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

from polder.common.auth import issue_token
from polder.common.db import create_pool
from polder.common.settings import Settings
from polder.location.main import build_app
from tests.conftest import eventually
from tests.support import serve

pytestmark = pytest.mark.integration


def ping(
    seconds_ago: float = 1.0, lat: float = 52.37, lng: float = 4.89, **extra: Any
) -> dict[str, Any]:
    t = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return {"lat": lat, "lng": lng, "recorded_at": t.isoformat(), **extra}


class Api:
    def __init__(self, base: str, settings: Settings, client: httpx.AsyncClient) -> None:
        self.base = base
        self.settings = settings
        self.client = client

    def auth(self, role: str, sub: str) -> dict[str, str]:
        return {"authorization": f"Bearer {issue_token(self.settings, role, sub)}"}

    async def post_pings(
        self, driver: str, pings: list[dict[str, Any]], as_: str | None = None
    ) -> httpx.Response:
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
        yield Api(base, settings, client)


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


async def test_a_keyed_batch_retried_gets_its_first_answer_and_records_nothing_again(
    api: Api,
) -> None:
    async def send(pings: list[dict[str, Any]], key: str, driver: str = "dk") -> httpx.Response:
        return await api.client.post(
            f"{api.base}/v1/drivers/{driver}/locations",
            json={"pings": pings},
            headers={**api.auth("driver", driver), "Idempotency-Key": key},
        )

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
