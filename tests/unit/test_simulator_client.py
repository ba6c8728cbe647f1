"""The simulator's HTTP client against a real (local, in-process) HTTP server: a POST whose
connection breaks is repeated with the same Idempotency-Key, so the service's stored answer
keeps the simulator's view and the system's in step."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from polder.common.auth import Role
from polder.common.settings import Settings
from polder.simulator.client import Polder


async def test_a_post_whose_connection_broke_is_repeated_with_its_key() -> None:
    keys: list[str | None] = []

    async def status(request: web.Request) -> web.StreamResponse:
        keys.append(request.headers.get("idempotency-key"))
        if len(keys) == 1:  # the service acted, then the connection broke before the answer
            assert request.transport is not None
            request.transport.close()
        return web.json_response({"driver_id": "d1", "status": "idle"})

    app = web.Application()
    app.router.add_post("/v1/drivers/d1/status", status)
    async with TestServer(app, host="127.0.0.1") as server:
        api = Polder(Settings(dispatch_port=server.port))
        try:
            answer = await api.call(
                "dispatch",
                "POST",
                "/v1/drivers/d1/status",
                Role.DRIVER,
                "d1",
                json={"status": "online"},
            )
        finally:
            await api.close()
    assert answer.ok and answer.body["status"] == "idle"
    assert len(keys) == 2 and keys[0] is not None and keys[0] == keys[1]
    assert sum(api.errors.values()) == 1  # the broken connection, counted
