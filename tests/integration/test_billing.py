"""Billing for real: a ride through dispatch's API ends in a fare, a ledger posting and a
statement, computed from the events billing consumed from the broker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from polder.billing.main import build_app as build_billing
from polder.billing.runtime import BillingRuntime
from polder.common.auth import issue_token
from polder.common.bus import Bus
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DLQ, DRIVER_EVENTS
from tests.conftest import eventually
from tests.integration.test_dispatch import CENTRE, Dispatch, running
from tests.support import read_topic, serve

pytestmark = pytest.mark.integration


class Billing:
    def __init__(self, base: str, rt: BillingRuntime, client: httpx.AsyncClient) -> None:
        self.base, self.rt, self.client = base, rt, client

    async def get(self, path: str, role: str, sub: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {issue_token(self.rt.settings, role, sub)}"}
        headers.update(kw.pop("headers", {}))
        return await self.client.get(f"{self.base}{path}", headers=headers, **kw)

    @property
    def pool(self) -> Any:
        return self.rt.statements.pool


@contextlib.asynccontextmanager
async def billing_service(settings: Settings) -> AsyncIterator[Billing]:
    app = build_billing(settings)
    async with serve(app) as base, httpx.AsyncClient(timeout=15) as client:
        yield Billing(base, app.state.runtime, client)


async def ride(d: Dispatch, driver: str, customer: str) -> str:
    await d.online(driver, *CENTRE)
    await d.order(customer)
    await d.batch()
    [offer] = await d.offers(driver)
    r = await d.call("POST", f"/v1/offers/{offer['offer_id']}/accept", "driver", driver)
    trip_id: str = r.json()["trip_id"]
    for step in ("arrived_pickup", "picked_up", "arrived_dropoff", "completed"):
        r = await d.call(
            "POST", f"/v1/trips/{trip_id}/events", "driver", driver, json={"type": step}
        )
        assert r.status_code == 200, r.text
        await asyncio.sleep(0.2)
    return trip_id


async def test_a_ride_is_priced_posted_and_on_the_statement(settings: Settings) -> None:
    async with running(settings) as d, billing_service(settings) as b:
        trip_id = await ride(d, "drv-b1", "cust-b1")

        async def fare() -> httpx.Response:
            return await b.get(f"/v1/trips/{trip_id}/fare", "customer", "cust-b1")

        customer_view = (await eventually(fare, until=lambda r: r.status_code == 200)).json()
        driver_view = (await b.get(f"/v1/trips/{trip_id}/fare", "driver", "drv-b1")).json()
        operator_view = (await b.get(f"/v1/trips/{trip_id}/fare", "operator", "ops")).json()
        assert customer_view == driver_view == operator_view
        assert customer_view["outcome"] == "completed"
        fare = customer_view["fare"]
        assert fare["currency"] == "EUR" and fare["total_minor"] > 0
        assert sum(line["amount_minor"] for line in fare["lines"]) == fare["total_minor"]
        assert (
            await b.get(f"/v1/trips/{trip_id}/fare", "customer", "someone-else")
        ).status_code == 404
        assert (
            await b.get(f"/v1/trips/{trip_id}/fare", "driver", "other-driver")
        ).status_code == 404

        async def postings() -> list[Any]:
            rows: list[Any] = await b.pool.fetch("SELECT * FROM ledger_transactions")
            return rows

        [tx] = await eventually(postings, until=lambda rows: len(rows) == 1)
        assert tx["kind"] == "trip_settlement" and str(tx["trip_id"]) == trip_id
        entries = await b.pool.fetch("SELECT * FROM ledger_entries WHERE tx_id = $1", tx["tx_id"])
        assert sum(e["amount_minor"] for e in entries) == 0
        assert {e["account"] for e in entries} >= {
            "customer:cust-b1:receivable",
            "driver:drv-b1:payable",
        }
        customer_debit = next(e for e in entries if e["account"].startswith("customer:"))
        assert customer_debit["amount_minor"] == fare["total_minor"]

        # a window that has ended, so every request sees the same seconds
        now = datetime.now(UTC)
        window = {"from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat()}
        r = await b.get("/v1/drivers/drv-b1/statement", "driver", "drv-b1", params=window)
        assert r.status_code == 200, r.text
        s = r.json()
        t = s["time"]
        assert s["driver_id"] == "drv-b1" and s["policy"] == "nl_hourly"
        assert t["on_trip_s"] > 0 and t["at_pickup_s"] > 0 and t["idle_s"] > 0
        parts = sum(
            t[k]
            for k in (
                "idle_s",
                "offered_s",
                "en_route_pickup_s",
                "at_pickup_s",
                "on_trip_s",
                "at_dropoff_s",
            )
        )
        assert t["online_s"] == pytest.approx(parts, abs=0.01)
        waiting = t["idle_s"] + t["offered_s"] + t["at_pickup_s"] + t["at_dropoff_s"]
        assert s["waiting"]["total_s"] == pytest.approx(waiting, abs=0.01)
        assert s["waiting"]["paid_s"] + s["waiting"]["unpaid_s"] == pytest.approx(waiting, abs=0.01)
        assert s["earnings"]["currency"] == "EUR" and s["earnings"]["total_minor"] > 0
        assert 0 <= s["unpaid_share"] <= 1

        # the same record under another policy: the same seconds, other money
        prop22 = (
            await b.get(
                "/v1/drivers/drv-b1/statement",
                "operator",
                "ops",
                params={**window, "policy": "platform_share"},
            )
        ).json()
        assert prop22["time"] == s["time"] and prop22["policy"] == "platform_share"
        # a policy whose rates are in another currency: compared at a stated reference rate
        compared = await b.get(
            "/v1/drivers/drv-b1/statement",
            "operator",
            "ops",
            params={**window, "policy": "prop22"},
        )
        assert compared.status_code == 200, compared.text
        body = compared.json()
        assert body["time"] == s["time"] and body["earnings"]["currency"] == "EUR"
        assert body["rates_conversion"]["reference_rate"] == "1 EUR = 1.0465 USD"
        csv = await b.get(
            "/v1/drivers/drv-b1/statement",
            "driver",
            "drv-b1",
            params=window,
            headers={"accept": "text/csv"},
        )
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
        assert "drv-b1" in csv.text or "total" in csv.text
        assert (
            await b.get("/v1/drivers/drv-b1/statement", "driver", "drv-b2", params=window)
        ).status_code == 403
        assert (
            await b.get("/v1/drivers/drv-b1/statement", "customer", "drv-b1", params=window)
        ).status_code == 403
        bad = await b.get(
            "/v1/drivers/drv-b1/statement", "operator", "ops", params={"from": "yesterday"}
        )
        assert bad.status_code == 422


async def test_a_replayed_topic_posts_nothing_twice(settings: Settings) -> None:
    async with running(settings) as d, billing_service(settings) as b:
        await ride(d, "drv-r", "cust-r")

        async def count() -> int:
            n: int = await b.pool.fetchval("SELECT count(*) FROM ledger_transactions")
            return n

        await eventually(count, until=lambda n: n == 1)
        stored = await b.pool.fetchval("SELECT count(*) FROM driver_events")
    # A second billing instance on a fresh consumer group reads both topics from offset 0:
    # every event is a duplicate of one already processed.
    replay = settings.model_copy(update={"namespace": settings.namespace})
    async with billing_service(replay) as again:
        metrics = again.rt.metrics
        await asyncio.sleep(0.5)
        assert await again.pool.fetchval("SELECT count(*) FROM ledger_transactions") == 1
        assert await again.pool.fetchval("SELECT count(*) FROM driver_events") == stored
        assert metrics.postings.labels("trip_settlement")._value.get() == 0


async def test_the_database_keeps_the_ledger_balanced_and_append_only(settings: Settings) -> None:
    async with billing_service(settings) as b:
        tx = uuid.uuid4()
        async with b.pool.acquire() as conn:
            with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
                async with conn.transaction():
                    await conn.execute(
                        "INSERT INTO ledger_transactions (tx_id, kind, occurred_at, caused_by) "
                        "VALUES ($1, 'test', now(), 'test')",
                        tx,
                    )
                    await conn.execute(
                        "INSERT INTO ledger_entries VALUES "
                        "($1, $2, 'a', 'EUR', 100), ($3, $2, 'b', 'EUR', -99)",
                        uuid.uuid4(),
                        tx,
                        uuid.uuid4(),
                    )
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO ledger_transactions (tx_id, kind, occurred_at, caused_by) "
                    "VALUES ($1, 'test', now(), 'test')",
                    tx,
                )
                await conn.execute(
                    "INSERT INTO ledger_entries VALUES "
                    "($1, $2, 'a', 'EUR', 100), ($3, $2, 'b', 'EUR', -100)",
                    uuid.uuid4(),
                    tx,
                    uuid.uuid4(),
                )
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute("UPDATE ledger_entries SET amount_minor = 1")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute("DELETE FROM ledger_transactions")


async def test_operators_get_the_waiting_report(settings: Settings) -> None:
    async with running(settings) as d, billing_service(settings) as b:
        await ride(d, "drv-w1", "cust-w1")
        await d.online("drv-w2", CENTRE[0] + 0.01, CENTRE[1])

        async def settled() -> int:
            n: int = await b.pool.fetchval("SELECT count(*) FROM ledger_transactions")
            return n

        await eventually(settled, until=lambda n: n == 1)

        async def second_worker_seen() -> int:
            n: int = await b.pool.fetchval(
                "SELECT count(*) FROM driver_events WHERE driver_id = 'drv-w2'"
            )
            return n

        await eventually(second_worker_seen, until=lambda n: n >= 1)  # its own topic partition
        now = datetime.now(UTC)
        window = {"from": (now - timedelta(hours=1)).isoformat(), "to": now.isoformat()}
        r = await b.get(
            "/v1/reports/waiting", "operator", "ops", params={**window, "group_by": "driver"}
        )
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["workers"] == 2 and report["policy"] == "nl_hourly"
        totals = report["totals"]
        assert totals["p1_share"] + totals["p2_share"] + totals["p3_share"] == pytest.approx(
            1, abs=1e-5
        )
        assert {g["key"] for g in report["groups"]} == {"drv-w1", "drv-w2"}
        assert 0 <= report["unpaid_waiting_gini"] <= 1
        assert "nl_hourly" in report["below_floor_share"]
        for group_by in ("hour", "cell"):
            grouped = await b.get(
                "/v1/reports/waiting", "operator", "ops", params={**window, "group_by": group_by}
            )
            assert grouped.status_code == 200
            online = sum(g["online_s"] for g in grouped.json()["groups"])
            assert online == pytest.approx(totals["online_s"], abs=0.01)
        assert (
            await b.get("/v1/reports/waiting", "driver", "drv-w1", params=window)
        ).status_code == 403
        bad = await b.get(
            "/v1/reports/waiting", "operator", "ops", params={**window, "group_by": "moon"}
        )
        assert bad.status_code == 422


async def _shift(pool: Any, driver: str, changes: list[tuple[datetime, str, str, str]]) -> None:
    """Store state changes as the consumer would (server times), bypassing the broker."""
    seq = await pool.fetchval(
        "SELECT coalesce(max(seq), 0) FROM driver_events WHERE driver_id = $1", driver
    )
    for i, (at, before, after, cause) in enumerate(changes, start=seq + 1):
        data = {"driver_id": driver, "seq": i, "from": before, "to": after, "cause": cause}
        await pool.execute(
            "INSERT INTO driver_events (event_id, driver_id, seq, at, data) "
            "VALUES ($1, $2, $3, $4, $5)",
            str(uuid.uuid4()),
            driver,
            i,
            at,
            data,
        )


async def _alive(pool: Any, driver: str, start: datetime, end: datetime) -> None:
    """A ping every 5 minutes: the worker's app was on (billing infers silence otherwise)."""
    t = start
    while t <= end:
        await pool.execute(
            "INSERT INTO pings (driver_id, recorded_at_ms, received_at, lat, lng, cell8) "
            "VALUES ($1, $2, $3, 52.37, 4.89, 0)",
            driver,
            int(t.timestamp() * 1000),
            t,
        )
        t += timedelta(minutes=5)


async def test_a_day_below_the_floor_gets_one_top_up_corrected_by_late_events(
    settings: Settings,
) -> None:
    async with billing_service(settings) as b:
        closer = b.rt.closer
        day = closer.day_of(datetime.now(UTC)) - timedelta(days=1)
        nine, eleven = day + timedelta(hours=9), day + timedelta(hours=11)
        await _shift(
            b.pool,
            "drv-t",
            [(nine, "offline", "idle", "went_online"), (eleven, "idle", "offline", "went_offline")],
        )
        await _alive(b.pool, "drv-t", nine, eleven)
        now = datetime.now(UTC)
        assert await closer.close(day, now) == 1
        [tx] = await b.pool.fetch(
            "SELECT * FROM ledger_transactions WHERE kind = 'topup:nl_hourly'"
        )
        entries = await b.pool.fetch("SELECT * FROM ledger_entries WHERE tx_id = $1", tx["tx_id"])
        # NL minimum wage from 2025-07-01: EUR 14.40/h x 2 online h, nothing earned (policies.json)
        assert {e["account"]: e["amount_minor"] for e in entries} == {
            "platform:topup_expense": 2880,
            "driver:drv-t:payable": -2880,
        }
        assert await closer.close(day, now) == 0  # closing again changes nothing

        # a late event: the worker took a 30 min break in the middle (not paid online time)
        await _shift(
            b.pool,
            "drv-t",
            [
                (nine + timedelta(minutes=30), "idle", "break", "took_break"),
                (nine + timedelta(minutes=60), "break", "idle", "went_online"),
            ],
        )
        assert await closer.close(day, now) == 2  # the old top-up reversed, the right one posted
        live = await b.pool.fetchval(
            "SELECT -sum(amount_minor) FROM ledger_entries WHERE account = 'driver:drv-t:payable'"
        )
        assert live == 2160  # 1.5 h x 1440
        assert (
            await b.pool.fetchval(
                "SELECT count(*) FROM ledger_transactions WHERE reverses IS NOT NULL"
            )
            == 1
        )
        unbalanced = await b.pool.fetchval(
            "SELECT count(*) FROM (SELECT tx_id FROM ledger_entries GROUP BY tx_id, currency "
            "HAVING sum(amount_minor) <> 0) x"
        )
        assert unbalanced == 0


async def test_a_record_billing_cannot_store_is_dead_lettered_and_the_rest_flows(
    settings: Settings,
) -> None:
    # An order id that is no UUID passes the schema validator (format is not enforced) but
    # cannot be stored: it goes to polder.dlq with the reason, and does not hold up the good
    # record behind it on the same partition.
    bus = Bus(settings, SchemaRegistry.load(), source="test")
    await bus.start()
    try:
        now = datetime.now(UTC)
        for seq, order in ((1, "not-a-uuid"), (2, str(uuid.uuid4()))):
            data = {
                "driver_id": "drv-dlq",
                "seq": seq,
                "from": "idle" if seq == 1 else "offered",
                "to": "offered" if seq == 1 else "idle",
                "cause": "offer_sent" if seq == 1 else "offer_declined",
                "order_id": order,
                "kind": "ride",
            }
            event = bus.event("polder.driver.state_changed.v1", "drv-dlq", data, now)
            await bus.publish(DRIVER_EVENTS, "drv-dlq", event)
    finally:
        await bus.stop()
    async with billing_service(settings) as b:

        async def stored() -> list[Any]:
            rows: list[Any] = await b.pool.fetch("SELECT seq FROM driver_events")
            return rows

        rows = await eventually(stored, until=lambda rs: len(rs) == 1)
        assert rows[0]["seq"] == 2
        [letter] = await read_topic(settings, DLQ, until=lambda rs: len(rs) >= 1)
        assert letter.event.data["consumer"] == "billing"
        assert "order_id is not a UUID: 'not-a-uuid'" in letter.event.data["reason"]
        assert letter.key == "drv-dlq"
