"""Each service's live /metrics follows Prometheus conventions (`promtool check metrics`: units
in names, `_total` counters, help text) and carries no unbounded label values: after traffic
for a driver, a customer and an order, none of their ids appears in any label."""

from __future__ import annotations

import asyncio
import shutil
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from polder.billing.main import build_app as build_billing
from polder.common.auth import issue_token
from polder.common.db import create_pool
from polder.common.envelope import format_time
from polder.common.metrics import PoolCollector
from polder.common.settings import Settings
from polder.dispatch.main import build_app as build_dispatch
from polder.location.main import build_app as build_location
from tests.support import serve

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool")
DRIVER, CUSTOMER = "drv-metrics-7f3a", "cust-metrics-91c2"

Traffic = list[tuple[str, str, str, str, dict[str, Any]]]  # method, path, role, sub, kwargs


def location_traffic() -> Traffic:
    now = format_time(datetime.now(UTC))
    return [
        (
            "POST",
            f"/v1/drivers/{DRIVER}/locations",
            "driver",
            DRIVER,
            {"json": {"pings": [{"lat": 52.37, "lng": 4.89, "recorded_at": now}]}},
        ),
        ("POST", f"/v1/drivers/{DRIVER}/locations", "driver", DRIVER, {"content": b"{"}),
        ("GET", "/v1/nearby?lat=52.37&lng=4.89&radius_m=500", "operator", "ops", {}),
    ]


def dispatch_traffic() -> Traffic:
    order = {
        "kind": "ride",
        "pickup": {"lat": 52.37, "lng": 4.89},
        "dropoff": {"lat": 52.38, "lng": 4.90},
    }
    return [
        ("POST", f"/v1/drivers/{DRIVER}/status", "driver", DRIVER, {"json": {"status": "online"}}),
        (
            "POST",
            "/v1/orders",
            "customer",
            CUSTOMER,
            {"json": order, "headers": {"Idempotency-Key": "metrics-1"}},
        ),
        ("GET", f"/v1/drivers/{DRIVER}/offers", "driver", DRIVER, {}),
        ("GET", "/v1/orders/00000000-0000-0000-0000-000000000000", "customer", CUSTOMER, {}),
    ]


def billing_traffic() -> Traffic:
    return [
        ("GET", f"/v1/drivers/{DRIVER}/statement", "driver", DRIVER, {}),
        ("GET", "/v1/trips/00000000-0000-0000-0000-000000000000/fare", "operator", "ops", {}),
        ("GET", "/v1/reports/waiting?group_by=cell", "operator", "ops", {}),
    ]


SERVICES: dict[str, tuple[Callable[[Settings], FastAPI], Callable[[], Traffic]]] = {
    "location": (build_location, location_traffic),
    "dispatch": (lambda s: build_dispatch(s, matcher="none"), dispatch_traffic),
    "billing": (build_billing, billing_traffic),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_live_metrics_follow_prometheus_conventions(service: str, settings: Settings) -> None:
    build, traffic = SERVICES[service]
    async with serve(build(settings)) as base, httpx.AsyncClient(base_url=base) as client:
        for method, path, role, sub, kw in traffic():
            headers = {"authorization": f"Bearer {issue_token(settings, role, sub)}"}
            headers.update(kw.pop("headers", {}))
            r = await client.request(method, path, headers=headers, **kw)
            assert r.status_code < 500, (path, r.status_code, r.text)
        exposition = (await client.get("/metrics")).text

    families = {
        line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE polder_")
    }
    assert "polder_http_requests_total" in families or "polder_http_requests" in families
    served = [line for line in exposition.splitlines() if line.startswith("polder_http_requests")]
    assert served, "the traffic above was not counted"
    for ident in (DRIVER, CUSTOMER):
        assert ident not in exposition, f"an id is a label value: unbounded cardinality ({ident})"

    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    lint = await asyncio.create_subprocess_exec(
        PROMTOOL, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await lint.communicate(exposition.encode())
    assert lint.returncode == 0, out.decode()


async def test_pool_connections_are_reported_at_scrape_time(settings: Settings) -> None:
    """The pools' connections in use and idle, and their maximum, as a scrape finds them."""
    schema = settings.db_schema("pools")
    pool = await create_pool(settings.database_url, schema, max_size=3)
    registry = CollectorRegistry()
    registry.register(PoolCollector(lambda: {"main": pool}))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"pool": "main", **labels})

    try:
        async with pool.acquire(), pool.acquire():
            assert value("polder_db_pool_connections", state="in_use") == 2
            assert value("polder_db_pool_max_connections") == 3
        assert value("polder_db_pool_connections", state="in_use") == 0
        assert value("polder_db_pool_connections", state="idle") == 2
    finally:
        await pool.close()
