"""The simulator's way into Polder: the public HTTP and WebSocket APIs with signed tokens.

Nothing here reads a table or a topic. Requests share one connection pool per service (bounded
concurrency); a 429 is waited out as the service asks, and requests that are safe to repeat
(reads, and order placement with its Idempotency-Key) are retried on connection errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import websockets

from polder.common.auth import Role, issue_token
from polder.common.settings import Settings


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def reason(self) -> str:
        body = self.body
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict) and "message" in error:
                return str(error["message"])
            return str(body.get("detail") or body)
        return str(body)


class Polder:
    """Clients for the three services, and a token per (role, subject)."""

    def __init__(self, settings: Settings, max_connections: int = 64) -> None:
        self.settings = settings
        host = settings.host
        self.urls = {
            name: f"http://{host}:{settings.port_of(name)}"
            for name in ("location", "dispatch", "billing")
        }
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        timeout = httpx.Timeout(30.0, connect=10.0)
        self.http = {
            name: httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)
            for name, url in self.urls.items()
        }
        self._tokens: dict[tuple[str, str], str] = {}
        self.requests = 0
        self.errors: dict[str, int] = {}

    async def close(self) -> None:
        for client in self.http.values():
            await client.aclose()

    def token(self, role: Role, sub: str) -> str:
        key = (role.value, sub)
        if key not in self._tokens:
            self._tokens[key] = issue_token(self.settings, role, sub)
        return self._tokens[key]

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        role: Role,
        sub: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        retry: bool = False,
    ) -> Answer:
        """One request. ``retry``: repeat on connection errors too (only for safe requests)."""
        all_headers = {"authorization": f"Bearer {self.token(role, sub)}", **(headers or {})}
        content = None if json is None else orjson.dumps(json)
        if content is not None:
            all_headers["content-type"] = "application/json"
        for attempt in range(8):
            self.requests += 1
            try:
                r = await self.http[service].request(
                    method, path, content=content, params=params, headers=all_headers
                )
            except httpx.TransportError as exc:
                self._count(f"{service} {type(exc).__name__}")
                if not retry or attempt == 7:
                    return Answer(0, f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            if r.status_code == 429 and attempt < 7:
                self._count(f"{service} 429")
                await asyncio.sleep(float(r.headers.get("retry-after", "1") or 1))
                continue
            if r.status_code >= 500:
                self._count(f"{service} {r.status_code}")
                if retry and attempt < 7:
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
            body: Any
            try:
                body = r.json()
            except ValueError:
                body = r.text
            return Answer(r.status_code, body)
        raise AssertionError("unreachable")

    def _count(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    @contextlib.asynccontextmanager
    async def feed(self, driver_id: str) -> AsyncIterator[websockets.ClientConnection]:
        """The worker's offer feed (dispatch WebSocket)."""
        base = self.urls["dispatch"].replace("http://", "ws://", 1)
        # the token goes in a header: a query string ends up in access logs
        headers = {"authorization": f"Bearer {self.token(Role.DRIVER, driver_id)}"}
        url = f"{base}/v1/drivers/{driver_id}/feed"
        async with websockets.connect(
            url, additional_headers=headers, open_timeout=30, ping_interval=20
        ) as ws:
            yield ws
