"""Closing pay periods: where a policy's floor exceeds what the worker earned in a day, the
platform owes a top-up, posted once. A late event that changes a closed day reverses the
posted top-up and posts the right one; re-closing an unchanged day posts nothing."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from polder.billing.domain.ledger import driver_account, topup
from polder.billing.ledger import post
from polder.billing.metrics import BillingMetrics
from polder.billing.statements import LOOKBACK, Statements
from polder.common.bus import Bus
from polder.common.outbox import OutboxRelay, Outgoing, add_to_outbox
from polder.common.tasks import wait_for_event

log = structlog.get_logger(__name__)


class PeriodCloser:
    def __init__(
        self,
        statements: Statements,
        bus: Bus,
        relay: OutboxRelay,
        metrics: BillingMetrics,
        *,
        policy: str,
        close_after: timedelta = timedelta(hours=1),
    ) -> None:
        self.statements = statements
        self.bus = bus
        self.relay = relay
        self.metrics = metrics
        self.policy = policy
        self.close_after = close_after
        rates, city = statements.rates, statements.settings.city
        self.zone = ZoneInfo(rates.jurisdiction_of_city(city).timezone)

    def day_of(self, t: datetime) -> datetime:
        local = t.astimezone(self.zone)
        return local.replace(hour=0, minute=0, second=0, microsecond=0)

    async def close(self, day: datetime, now: datetime) -> int:
        """Post (or correct) every worker's top-up for the local day starting at ``day``."""
        end = (day + timedelta(days=1, hours=2)).astimezone(self.zone)
        end = end.replace(hour=0, minute=0, second=0, microsecond=0)  # DST-safe next midnight
        pool = self.statements.pool
        drivers = [
            r["driver_id"]
            for r in await pool.fetch(
                "SELECT DISTINCT driver_id FROM driver_events WHERE at >= $1 AND at < $2",
                day - LOOKBACK,
                end,
            )
        ]
        posted = 0
        for driver in drivers:
            [statement], _, _ = await self.statements.compute(driver, day, end, [self.policy], now)
            posted += await self._settle(
                driver, day, statement.topup_minor, statement.currency, end
            )
        return posted

    async def _settle(
        self, driver: str, day: datetime, amount: int, currency: str, at: datetime
    ) -> int:
        period = day.date().isoformat()
        kind = f"topup:{self.policy}"
        pool = self.statements.pool
        events: list[Outgoing] = []
        async with pool.acquire() as conn, conn.transaction():
            # one closer at a time per worker and day
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"{driver}/{period}/{self.policy}"
            )
            live = await conn.fetch(
                "SELECT t.tx_id, -e.amount_minor AS amount FROM ledger_transactions t "
                "JOIN ledger_entries e USING (tx_id) "
                "WHERE t.driver_id = $1 AND t.kind = $2 AND t.caused_by = $3 AND e.account = $4 "
                "AND NOT EXISTS (SELECT 1 FROM ledger_transactions r WHERE r.reverses = t.tx_id)",
                driver,
                kind,
                f"period:{period}",
                driver_account(driver),
            )
            if sum(r["amount"] for r in live) == amount:
                return 0
            for row in live:  # the day changed after it was closed: undo, then post anew
                previous = topup(
                    driver_id=driver,
                    policy=self.policy,
                    period=period,
                    currency=currency,
                    amount_minor=row["amount"],
                    at=at,
                )
                assert previous.tx_id == row["tx_id"]
                event = await post(conn, self.bus, previous.reversal(f"recount:{amount}", at))
                events += [event] if event else []
            if amount > 0:
                new = topup(
                    driver_id=driver,
                    policy=self.policy,
                    period=period,
                    currency=currency,
                    amount_minor=amount,
                    at=at,
                )
                event = await post(conn, self.bus, new)
                if event:
                    events.append(event)
                    self.metrics.topups.labels(self.policy, currency).inc(amount)
            await add_to_outbox(conn, self.bus, events)
        self.relay.notify()
        return len(events)

    async def run(self, stop: asyncio.Event, every_s: float = 300.0) -> None:
        """Close each finished day once it is ``close_after`` old, and the day before it again
        (late events); both are no-ops when nothing changed."""
        while not stop.is_set():
            now = datetime.now(self.zone)
            today = self.day_of(now - self.close_after)
            for back in (1, 2):
                try:
                    await self.close(today - timedelta(days=back), now)
                except Exception:
                    log.exception("closing a pay period failed; retrying later")
            await wait_for_event(stop, every_s)
