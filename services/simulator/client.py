"""The simulator's way into Polder: the public HTTP and WebSocket APIs with signed tokens.

Nothing here reads a table or a topic. Requests share one connection pool per service (bounded
concurrency); a 429 is waited out as the service asks, and requests that are safe to repeat
are retried on connection errors: reads, and every POST, each of which carries an
Idempotency-Key (the services store the first answer, so a repeat changes nothing). A POST whose
connection broke after the service acted on it is not mistaken for one it never saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
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
        self.max_connections = max_connections
        # Sessions belong to the running loop, so they are opened on first use. aiohttp costs
        # about a seventh of httpx's client CPU per request: the simulator shares the box with
        # the system it drives, and its own CPU was what limited the city's size.
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._tokens: dict[tuple[str, str], str] = {}
        self.requests = 0
        self.errors: dict[str, int] = {}

    def session(self, service: str) -> aiohttp.ClientSession:
        if service not in self._sessions:
            self._sessions[service] = aiohttp.ClientSession(
                self.urls[service],
                # Idle connections are dropped before the server's keep-alive timeout (uvicorn:
                # 5 s), so a request never goes out on a connection the server is closing.
                connector=aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=3.0),
                timeout=aiohttp.ClientTimeout(total=30.0, connect=10.0),
            )
        return self._sessions[service]

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def ready(self, service: str) -> bool:
        """Whether the service answers its readiness check (False when it cannot be reached)."""
        try:
            async with self.session(service).get("/readyz") as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

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
        """One request. ``retry``: repeat on connection errors too (only for safe requests; every
        POST is made safe with an Idempotency-Key of its own unless the caller gives one)."""
        all_headers = {"authorization": f"Bearer {self.token(role, sub)}", **(headers or {})}
        if method == "POST":
            if not any(k.lower() == "idempotency-key" for k in all_headers):
                all_headers["idempotency-key"] = uuid.uuid4().hex
            retry = True
        content = None if json is None else orjson.dumps(json)
        if content is not None:
            all_headers["content-type"] = "application/json"
        for attempt in range(8):
            self.requests += 1
            try:
                async with self.session(service).request(
                    method, path, data=content, params=params, headers=all_headers
                ) as r:
                    status, raw = r.status, await r.read()
                    retry_after = r.headers.get("retry-after", "1")
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._count(f"{service} {type(exc).__name__}")
                if not retry or attempt == 7:
                    return Answer(0, f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            if status == 429 and attempt < 7:
                self._count(f"{service} 429")
                await asyncio.sleep(float(retry_after or 1))
                continue
            if status >= 500:
                self._count(f"{service} {status}")
                if retry and attempt < 7:
                    await asyncio.sleep(0.2 * 2**attempt)
                    continue
            body: Any
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
            return Answer(status, body)
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
