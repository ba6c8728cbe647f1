"""Writing postings to the ledger tables and announcing them on polder.billing (outbox)."""

from __future__ import annotations

from collections.abc import Sequence

from polder.billing.domain.ledger import Posting
from polder.common.bus import Bus
from polder.common.db import Connection
from polder.common.envelope import format_time
from polder.common.outbox import Outgoing
from polder.common.topics import BILLING


async def post(conn: Connection, bus: Bus, posting: Posting) -> Outgoing | None:
    """Insert a posting unless its id is already there; the event to publish if it was new."""
    events = await post_many(conn, bus, [posting])
    return events[0] if events else None


async def post_many(conn: Connection, bus: Bus, postings: Sequence[Posting]) -> list[Outgoing]:
    """Insert the postings whose ids are not there yet, in two statements whatever their number;
    the events to publish for the new ones, in the order given. A posting given twice (same
    id) is inserted once; the database checks every transaction's balance at commit."""
    unique = list({p.tx_id: p for p in postings}.values())
    if not unique:
        return []
    inserted = {
        row["tx_id"]
        for row in await conn.fetch(
            "INSERT INTO ledger_transactions (tx_id, kind, driver_id, trip_id, occurred_at, "
            "caused_by, reverses) SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], "
            "$4::uuid[], $5::timestamptz[], $6::text[], $7::uuid[]) "
            "ON CONFLICT DO NOTHING RETURNING tx_id",
            [p.tx_id for p in unique],
            [p.kind for p in unique],
            [p.driver_id for p in unique],
            [p.trip_id for p in unique],
            [p.occurred_at for p in unique],
            [p.caused_by for p in unique],
            [p.reverses for p in unique],
        )
    }
    new = [p for p in unique if p.tx_id in inserted]
    entries = [
        (entry_id, p.tx_id, e.account, e.currency, e.amount_minor)
        for p in new
        for entry_id, e in zip(p.entry_ids(), p.entries, strict=True)
    ]
    if entries:
        columns = list(zip(*entries, strict=True))
        await conn.execute(
            "INSERT INTO ledger_entries (entry_id, tx_id, account, currency, amount_minor) "
            "SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[])",
            *(list(c) for c in columns),
        )
    return [_announce(bus, p) for p in new]


def _announce(bus: Bus, posting: Posting) -> Outgoing:
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
