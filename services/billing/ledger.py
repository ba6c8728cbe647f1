"""Writing postings to the ledger tables and announcing them on polder.billing (outbox)."""

from __future__ import annotations

from polder.billing.domain.ledger import Posting
from polder.common.bus import Bus
from polder.common.db import Connection
from polder.common.envelope import format_time
from polder.common.outbox import Outgoing
from polder.common.topics import BILLING


async def post(conn: Connection, bus: Bus, posting: Posting) -> Outgoing | None:
    """Insert a posting unless its id is already there; the event to publish if it was new."""
    inserted = await conn.fetchval(
        "INSERT INTO ledger_transactions (tx_id, kind, driver_id, trip_id, occurred_at, "
        "caused_by, reverses) VALUES ($1, $2, $3, $4::uuid, $5, $6, $7) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        posting.tx_id,
        posting.kind,
        posting.driver_id,
        posting.trip_id,
        posting.occurred_at,
        posting.caused_by,
        posting.reverses,
    )
    if inserted is None:
        return None
    await conn.executemany(
        "INSERT INTO ledger_entries (entry_id, tx_id, account, currency, amount_minor) "
        "VALUES ($1, $2, $3, $4, $5)",
        [
            (entry_id, posting.tx_id, e.account, e.currency, e.amount_minor)
            for entry_id, e in zip(posting.entry_ids(), posting.entries, strict=True)
        ],
    )
    data = {
        "tx_id": str(posting.tx_id),
        "kind": posting.kind,
        "driver_id": posting.driver_id,
        "trip_id": posting.trip_id,
        "occurred_at": format_time(posting.occurred_at),
        "caused_by": posting.caused_by,
        "reverses": str(posting.reverses) if posting.reverses else None,
        "entries": [
            {"account": e.account, "currency": e.currency, "amount_minor": e.amount_minor}
            for e in posting.entries
        ],
    }
    key = posting.driver_id or "platform"
    return BILLING, key, bus.event("polder.billing.posted.v1", key, data, posting.occurred_at)
