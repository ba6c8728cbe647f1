"""A worker's own data as billing holds it, for the worker to take away (GDPR art. 15/20):
the statement of the range with its per-day pay, the time segments, the ledger postings on the
worker's own accounts, and the pings billing keeps (raw ones, and marks and legs of those past
retention). Nothing about a customer: orders are named by id only, and ledger entries on other
parties' accounts are left out."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from polder.billing.domain.policies import from_ms
from polder.billing.domain.segments import Segment
from polder.billing.statements import Statements

MAX_SPAN = timedelta(days=7)  # a month is four requests; a week of pings is ~120 000 rows


def _segment(s: Segment) -> dict[str, Any]:
    return {
        "kind": s.kind.value,
        "from": from_ms(s.start_ms).isoformat(),
        "to": from_ms(s.end_ms).isoformat(),
        "trip_id": s.trip_id,
        "order_id": s.order_id,
        "offer_id": s.offer_id,
        "product": s.product,
        "inferred": s.inferred,
        "distance_m": round(s.distance_m, 1),
    }


async def export(
    statements: Statements, driver_id: str, start: datetime, end: datetime, now: datetime
) -> dict[str, Any]:
    policy = statements.settings.default_policy
    [statement], segments, _ = await statements.compute(driver_id, start, end, [policy], now)
    pool = statements.pool
    postings = await pool.fetch(
        "SELECT t.tx_id::text, t.kind, t.trip_id::text, t.occurred_at, t.reverses::text, "
        "e.account, e.currency, e.amount_minor FROM ledger_transactions t "
        "JOIN ledger_entries e USING (tx_id) "
        "WHERE t.driver_id = $1 AND t.occurred_at >= $2 AND t.occurred_at < $3 "
        "AND starts_with(e.account, 'driver:' || $1 || ':') "
        "ORDER BY t.occurred_at, t.tx_id, e.account",
        driver_id,
        start,
        end,
    )
    pings = await pool.fetch(
        "SELECT recorded_at_ms, received_at, lat, lng, accuracy_m, cell8 FROM pings "
        "WHERE driver_id = $1 AND received_at >= $2 AND received_at < $3 "
        "ORDER BY recorded_at_ms",
        driver_id,
        start,
        end,
    )
    marks = await pool.fetch(
        "SELECT recorded_at_ms, received_at, cell8 FROM ping_marks "
        "WHERE driver_id = $1 AND received_at >= $2 AND received_at < $3 "
        "ORDER BY recorded_at_ms",
        driver_id,
        start,
        end,
    )
    legs = await pool.fetch(
        "SELECT start_ms, end_ms, distance_m FROM ping_legs "
        "WHERE driver_id = $1 AND received_at >= $2 AND received_at < $3 ORDER BY end_ms",
        driver_id,
        start,
        end,
    )
    return {
        "driver_id": driver_id,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "statement": statement.to_dict(),
        "segments": [_segment(s) for s in segments],
        "postings": [
            {
                "tx_id": r["tx_id"],
                "kind": r["kind"],
                "trip_id": r["trip_id"],
                "occurred_at": r["occurred_at"].isoformat(),
                "reverses": r["reverses"],
                "account": r["account"],
                "currency": r["currency"],
                "amount_minor": r["amount_minor"],
            }
            for r in postings
        ],
        "pings": [
            {
                "recorded_at": from_ms(r["recorded_at_ms"]).isoformat(),
                "received_at": r["received_at"].isoformat(),
                "lat": r["lat"],
                "lng": r["lng"],
                "accuracy_m": r["accuracy_m"],
                "cell8": f"{r['cell8']:x}",
            }
            for r in pings
        ],
        "ping_marks": [
            {
                "recorded_at": from_ms(r["recorded_at_ms"]).isoformat(),
                "received_at": r["received_at"].isoformat(),
                "cell8": f"{r['cell8']:x}",
            }
            for r in marks
        ],
        "ping_legs": [
            {
                "from": from_ms(r["start_ms"]).isoformat(),
                "to": from_ms(r["end_ms"]).isoformat(),
                "distance_m": round(r["distance_m"], 1),
            }
            for r in legs
        ],
    }
