"""The common HTTP kernel: error shape, body limits, readiness, metrics."""

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry

from polder.common.http import service_app
from polder.common.metrics import CommonMetrics
from polder.common.settings import Settings


@contextlib.asynccontextmanager
async def no_lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield


def make_app(checks: dict) -> FastAPI:  # type: ignore[type-arg]
    app = service_app(
        title="t",
        settings=Settings(max_body_bytes=100),
        lifespan=no_lifespan,
        metrics=CommonMetrics(CollectorRegistry()),
    )
    app.state.ready_checks = checks

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_readyz_names_the_failing_dependency() -> None:
    async def ok() -> None:
        return None

    async def down() -> None:
        raise ConnectionRefusedError("connection refused")

    async with client(make_app({"database": down, "broker": ok})) as c:
        r = await c.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["broker"] == "ok"
    assert body["checks"]["database"].startswith("failed: ConnectionRefusedError")
    async with client(make_app({"broker": ok})) as c:
        assert (await c.get("/readyz")).status_code == 200
        assert (await c.get("/healthz")).json() == {"status": "ok"}


async def test_bodies_over_the_limit_are_413_with_or_without_content_length() -> None:
    async with client(make_app({})) as c:
        assert (await c.post("/echo", content=b"x" * 100)).json() == {"size": 100}
        r = await c.post("/echo", content=b"x" * 101)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"y" * 30

        r = await c.post("/echo", content=chunks())
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


async def test_errors_share_one_json_shape_and_requests_are_counted() -> None:
    app = make_app({})
    async with client(app) as c:
        r = await c.get("/nowhere")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await c.get("/echo")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        await c.post("/echo", content=b"1")
        metrics = (await c.get("/metrics")).text
    assert 'polder_http_requests_total{method="POST",route="/echo",status="200"} 1.0' in metrics
    assert 'route="unmatched",status="404"' in metrics
