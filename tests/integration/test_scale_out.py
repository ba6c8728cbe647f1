"""Two instances of every service, one of each SIGKILLed mid-stream: nothing is lost and
nothing takes effect twice.

Each instance is a real `polder serve` process on the session's broker and Postgres, as a
deployment runs them. Workers stream pings and run rides through whichever instance is up (a
load balancer's view); halfway through the rides one instance of each service is killed
without warning, so whatever it had fetched but not committed is delivered again to the
survivor. The checks read the services' own tables:

* location: every accepted ping is in the trace exactly once;
* dispatch: one writer per order and worker held across two matchers: no worker ever held two
  pending offers at once, each order has one accepted offer and one trip, all completed;
* billing: every event dispatch published is stored exactly once, every trip is settled by
  one fare posting, and every ledger transaction balances.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from polder.common.auth import issue_token
from polder.common.children import remove_orphans, settings_env
from polder.common.envelope import format_time
from polder.common.settings import Settings
from polder.common.topics import DRIVER_EVENTS
from polder.runtime.infra import free_port
from tests.conftest import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CENTRE = (52.3731, 4.8922)
SERVICES = ("location", "dispatch", "billing")
WORKERS = 10
RIDES_BEFORE_KILL = 5
RIDES_AFTER_KILL = 5


@dataclass
class Instance:
    service: str
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        # It could not remove its helper's share folder; the next start of one would, as this
        # does now (the folder carries the killed pid), so the suite leaves none behind.
        for prefix in ("polder-matcher-", "polder-traces-"):
            remove_orphans(Path(tempfile.gettempdir()), prefix)


def _env(settings: Settings) -> dict[str, str]:
    """The test's settings for each `polder serve`, with room for every request it sends."""
    return settings_env(
        settings.model_copy(update={"rate_limit_per_s": 200, "rate_limit_burst": 400})
    )


@contextlib.contextmanager
def instances(settings: Settings, logs: Path) -> Iterator[dict[str, list[Instance]]]:
    started: dict[str, list[Instance]] = {s: [] for s in SERVICES}
    try:
        for service in SERVICES:
            for n in range(2):
                port = free_port()
                log = logs / f"{service}-{n}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "polder", "serve", service, "--port", str(port)],
                        env=_env(settings),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                started[service].append(Instance(service, f"http://127.0.0.1:{port}", proc, log))
        for group in started.values():
            for inst in group:
                _wait_ready(inst)
        yield started
    finally:
        for group in started.values():
            for inst in group:
                if inst.alive:
                    inst.proc.terminate()
        for group in started.values():
            for inst in group:
                try:
                    inst.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    inst.proc.kill()


def _wait_ready(inst: Instance, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not inst.alive:
            raise AssertionError(f"{inst.service} died:\n{inst.log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{inst.base}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{inst.service} not ready:\n{inst.log.read_text()[-3000:]}")


@dataclass
class Cluster:
    settings: Settings
    group: dict[str, list[Instance]]
    client: httpx.AsyncClient
    accepted_pings: int = 0
    # pings whose request died with its instance: not acknowledged, but maybe already published
    unanswered_pings: int = 0
    trips: list[str] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)

    async def call(
        self, service: str, method: str, path: str, role: str, sub: str, turn: int = 0, **kw: Any
    ) -> httpx.Response:
        """Send to the instance ``turn`` picks among the live ones, as a load balancer would."""
        live = [i for i in self.group[service] if i.alive]
        inst = live[turn % len(live)]
        headers = {
            "authorization": f"Bearer {issue_token(self.settings, role, sub)}",
            **kw.pop("headers", {}),
        }
        return await self.client.request(method, f"{inst.base}{path}", headers=headers, **kw)


async def stream_pings(c: Cluster, n: int, stop: asyncio.Event) -> None:
    driver = f"drv-{n}"
    lat, lng = CENTRE[0] + 0.001 * (n % 5), CENTRE[1] + 0.001 * (n // 5)
    turn = n
    while not stop.is_set():
        now = datetime.now(UTC)
        ping = {"lat": lat, "lng": lng, "recorded_at": format_time(now)}
        try:
            r = await c.call(
                "location",
                "POST",
                f"/v1/drivers/{driver}/locations",
                "driver",
                driver,
                turn,
                json={"pings": [ping]},
            )
        except httpx.TransportError:
            # The instance died under the request: nothing was acknowledged, though the ping
            # may have been published before it died (then it is traced, once).
            c.unanswered_pings += 1
            turn += 1
            continue
        if r.status_code == 409 and r.json()["error"]["code"] == "driver_offline":
            # Going online reaches location through the topic a moment later; as the app
            # would, send again shortly (nothing was taken).
            await asyncio.sleep(0.2)
            continue
        assert r.status_code == 202, r.text
        c.accepted_pings += r.json()["accepted"]
        turn += 1
        await asyncio.sleep(0.4)


async def ride(c: Cluster, n: int, killed: asyncio.Event) -> None:
    """A customer orders; whichever worker gets the offer accepts and completes the trip."""
    customer = f"cust-{n}"
    body = {
        "kind": "ride",
        "pickup": {"lat": CENTRE[0] + 0.002, "lng": CENTRE[1] + 0.001 * n},
        "dropoff": {"lat": CENTRE[0] + 0.02, "lng": CENTRE[1] + 0.01},
    }
    r = await _retrying(
        c,
        "dispatch",
        "POST",
        "/v1/orders",
        "customer",
        customer,
        n,
        json=body,
        headers={"Idempotency-Key": f"order-{n}"},
    )
    assert r.status_code == 201, r.text
    order_id = r.json()["order_id"]
    c.orders.append(order_id)

    async def offered() -> tuple[str, str] | None:
        for w in range(WORKERS):
            driver = f"drv-{w}"
            got = await _retrying(
                c, "dispatch", "GET", f"/v1/drivers/{driver}/offers", "driver", driver, w
            )
            for offer in got.json()["offers"]:
                if offer["order_id"] == order_id:
                    return driver, offer["offer_id"]
        return None

    found = await eventually(offered, until=lambda x: x is not None, within=60)
    assert found is not None
    driver, offer_id = found
    r = await _retrying(c, "dispatch", "POST", f"/v1/offers/{offer_id}/accept", "driver", driver, n)
    assert r.status_code == 200, r.text
    trip_id = r.json()["trip_id"]
    c.trips.append(trip_id)
    for step in ("arrived_pickup", "picked_up", "arrived_dropoff", "completed"):
        if step == "arrived_dropoff" and n < RIDES_BEFORE_KILL:
            await killed.wait()  # the first rides straddle the kill
        r = await _retrying(
            c,
            "dispatch",
            "POST",
            f"/v1/trips/{trip_id}/events",
            "driver",
            driver,
            n,
            json={"type": step},
        )
        assert r.status_code == 200, (step, r.text)
        await asyncio.sleep(0.3)


async def _retrying(c: Cluster, service: str, *args: Any, **kw: Any) -> httpx.Response:
    """A request that a dying instance did not answer is sent again (to a live one); the
    requests here are idempotent or keyed, as clients behind a load balancer must make them."""
    for _ in range(3):
        try:
            return await c.call(service, *args, **kw)
        except httpx.TransportError:
            await asyncio.sleep(0.2)
    return await c.call(service, *args, **kw)


@contextlib.asynccontextmanager
async def connect(settings: Settings, service: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f'SET search_path TO "{settings.db_schema(service)}"')
        yield conn
    finally:
        await conn.close()


async def test_killing_one_instance_of_each_service_loses_and_doubles_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    with instances(settings, tmp_path) as group:
        async with httpx.AsyncClient(timeout=15) as client:
            c = Cluster(settings, group, client)
            for n in range(WORKERS):
                driver = f"drv-{n}"
                r = await c.call(
                    "dispatch",
                    "POST",
                    f"/v1/drivers/{driver}/status",
                    "driver",
                    driver,
                    n,
                    json={"status": "online"},
                )
                assert r.status_code == 200, r.text
            stop, killed = asyncio.Event(), asyncio.Event()
            pingers = [asyncio.create_task(stream_pings(c, n, stop)) for n in range(WORKERS)]
            await asyncio.sleep(1.5)  # positions reach both dispatch instances

            first = [asyncio.create_task(ride(c, n, killed)) for n in range(RIDES_BEFORE_KILL)]

            async def all_picked_up() -> int:
                for task in first:  # a ride that failed fails the test now, not at the timeout
                    if task.done():
                        task.result()
                async with connect(settings, "dispatch") as conn:
                    value: int = await conn.fetchval(
                        "SELECT count(*) FROM orders WHERE status = 'in_progress'"
                    )
                    return value

            await eventually(all_picked_up, until=lambda k: k == RIDES_BEFORE_KILL, within=90)
            for service in SERVICES:
                group[service][1].kill()
            killed.set()

            rides = range(RIDES_BEFORE_KILL, RIDES_BEFORE_KILL + RIDES_AFTER_KILL)
            second = [asyncio.create_task(ride(c, n, killed)) for n in rides]
            await asyncio.gather(*first, *second)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*pingers)
            for n in range(WORKERS):
                driver = f"drv-{n}"
                r = await c.call(
                    "dispatch",
                    "POST",
                    f"/v1/drivers/{driver}/status",
                    "driver",
                    driver,
                    n,
                    json={"status": "offline"},
                )
                assert r.status_code == 200, r.text

            # billing settles every trip on the surviving instance
            async def fares() -> list[int]:
                out = []
                for trip in c.trips:
                    r = await c.call("billing", "GET", f"/v1/trips/{trip}/fare", "operator", "ops")
                    out.append(r.status_code)
                return out

            codes = await eventually(fares, until=lambda s: all(x == 200 for x in s), within=90)
            assert len(codes) == RIDES_BEFORE_KILL + RIDES_AFTER_KILL

            await _check_location(settings, c)
            await _check_dispatch(settings, c)
            await _check_billing(settings, c)


async def _check_location(settings: Settings, c: Cluster) -> None:
    async def traced() -> int:
        async with connect(settings, "location") as conn:
            value: int = await conn.fetchval("SELECT count(*) FROM pings")
            return value

    # every acknowledged ping reaches the trace, written by whichever instance holds it
    total = await eventually(traced, until=lambda k: k >= c.accepted_pings, within=60)
    async with connect(settings, "location") as conn:
        doubled = await conn.fetchval(
            "SELECT count(*) FROM (SELECT driver_id, recorded_at FROM pings "
            "GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
    assert doubled == 0
    assert c.accepted_pings <= total <= c.accepted_pings + c.unanswered_pings


async def _check_dispatch(settings: Settings, c: Cluster) -> None:
    async with connect(settings, "dispatch") as conn:
        statuses = await conn.fetch("SELECT order_id::text, status FROM orders")
        assert {r["order_id"]: r["status"] for r in statuses} == dict.fromkeys(
            c.orders, "completed"
        )
        accepted = await conn.fetch(
            "SELECT order_id, count(*) AS n FROM offers WHERE status = 'accepted' GROUP BY 1"
        )
        assert len(accepted) == len(c.orders) and all(r["n"] == 1 for r in accepted)
        trips = await conn.fetchval("SELECT count(*) FROM trips")
        assert trips == len(c.orders)
        # no worker held two offers at once, whichever matcher made them
        overlapping = await conn.fetchval(
            """
            SELECT count(*) FROM offers a JOIN offers b
              ON a.driver_id = b.driver_id AND a.offer_id < b.offer_id
             AND a.created_at < coalesce(b.answered_at, b.expires_at)
             AND b.created_at < coalesce(a.answered_at, a.expires_at)
            """
        )
        assert overlapping == 0


async def _check_billing(settings: Settings, c: Cluster) -> None:
    async with connect(settings, "dispatch") as conn:
        rows = await conn.fetch(
            "SELECT event ->> 'id' AS id FROM outbox WHERE topic = $1",
            settings.topic(DRIVER_EVENTS.name),
        )
    published_ids = {r["id"] for r in rows}
    assert len(published_ids) >= 2 * WORKERS + 4 * len(c.trips)  # on, off, steps at least
    async with connect(settings, "billing") as conn:

        async def stored() -> set[str]:
            rows = await conn.fetch("SELECT event_id FROM driver_events")
            return {r["event_id"] for r in rows}

        ids = await eventually(stored, until=lambda s: s >= published_ids, within=60)
        assert ids == published_ids  # a primary key: each exactly once
        fares = await conn.fetch(
            "SELECT trip_id::text, count(*) AS n FROM ledger_transactions "
            "WHERE kind = 'trip_settlement' GROUP BY 1"
        )
        assert {r["trip_id"]: r["n"] for r in fares} == dict.fromkeys(c.trips, 1)
        unbalanced = await conn.fetchval(
            "SELECT count(*) FROM (SELECT tx_id, currency FROM ledger_entries "
            "GROUP BY 1, 2 HAVING sum(amount_minor) <> 0) u"
        )
        assert unbalanced == 0
