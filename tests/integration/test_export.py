"""A worker exports what billing holds about them: statement, segments, own postings, pings.
Another worker is refused; no customer's identity is in it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from prometheus_client import CollectorRegistry

from polder.billing.ingest import BillingIngest
from polder.billing.metrics import BillingMetrics
from polder.billing.pings import PingKeeper
from polder.billing.retention import PingRetention
from polder.common.bus import Bus, Received
from polder.common.outbox import OutboxRelay
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.fares.tariff import load_tariffs
from tests.integration.test_billing import billing_service
from tests.integration.test_billing_property import as_event
from tests.integration.test_retention import trace_events
from tests.unit.test_billing_ledger import random_city

pytestmark = pytest.mark.integration


async def test_a_worker_exports_its_billing_data_and_no_one_elses(settings: Settings) -> None:
    rng = random.Random(7)
    city = random_city(rng, 3)
    facts = [*city.changes, *city.orders.values(), *city.no_shows, *city.offers]
    records = [Received(as_event(f), None, "t", 0, i) for i, f in enumerate(facts)]
    async with billing_service(settings) as b:
        bus = Bus(settings, SchemaRegistry.load(), source="polder/billing")
        metrics = BillingMetrics(CollectorRegistry())
        ingest = BillingIngest(
            b.pool, bus, OutboxRelay(b.pool, bus), load_tariffs(), Decimal("0.75"), metrics
        )
        await ingest(records)
        settled = await b.pool.fetch(
            "SELECT driver_id, count(*) AS n FROM ledger_transactions "
            "WHERE kind = 'trip_settlement' GROUP BY driver_id ORDER BY n DESC"
        )
        driver = settled[0]["driver_id"]
        mine = [c for c in city.changes if c.driver_id == driver]
        lo, hi = min(c.at_ms for c in mine), max(c.at_ms for c in mine)
        events = trace_events(driver, lo - 60_000, hi + 600_000, rng, skew_ms=0)
        await PingKeeper(b.pool, metrics, spacing_ms=5_000)(
            [Received(e, driver, "l", 0, i) for i, e in enumerate(events)]
        )
        middle = datetime.fromtimestamp((lo + hi) / 2000, UTC)
        assert await PingRetention(b.pool, metrics)(middle) > 0  # some pings past retention

        start = datetime.fromtimestamp(lo / 1000, UTC).replace(hour=0, minute=0, second=0)
        window = {"from": start.isoformat(), "to": (start + timedelta(days=2)).isoformat()}
        path = f"/v1/drivers/{driver}/export"
        r = await b.get(path, "driver", driver, params=window)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["driver_id"] == driver and body["statement"]["driver_id"] == driver
        assert body["segments"] and body["pings"] and body["ping_marks"] and body["ping_legs"]
        kept = await b.pool.fetchval("SELECT count(*) FROM pings WHERE driver_id = $1", driver)
        marks = await b.pool.fetchval(
            "SELECT count(*) FROM ping_marks WHERE driver_id = $1", driver
        )
        assert (len(body["pings"]), len(body["ping_marks"])) == (kept, marks)
        assert {p["kind"] for p in body["postings"]} >= {"trip_settlement"}
        assert all(p["account"].startswith(f"driver:{driver}:") for p in body["postings"])
        # the statement in the export is the statement the worker gets
        statement = await b.get(f"/v1/drivers/{driver}/statement", "driver", driver, params=window)
        assert statement.json() == body["statement"]
        # no customer's identity travels with the worker's data
        text = orjson.dumps(body).decode()
        customers = {o.customer_id for o in city.orders.values()}
        assert customers and not any(c in text for c in customers)

        ops = await b.get(path, "operator", "ops", params=window)
        assert ops.status_code == 200 and ops.json() == body
        for role, sub in (("driver", "someone-else"), ("customer", driver)):
            other = await b.get(path, role, sub, params=window)
            assert other.status_code == 403, (role, other.text)
        week_and_a_day = {"from": window["from"], "to": (start + timedelta(days=8)).isoformat()}
        too_long = await b.get(path, "driver", driver, params=week_and_a_day)
        assert too_long.status_code == 422
        assert too_long.json()["error"]["code"] == "range_too_long"
