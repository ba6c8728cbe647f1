"""The matching loop: every batch window, match open orders to available workers optimally and
write the offers, each part of a batch all or nothing (one statement guarded by the rows'
versions, or a transaction when one changed). Workers and orders that changed meanwhile are
skipped."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import structlog
from prometheus_client import Histogram

from polder.common.envelope import format_time
from polder.common.geoindex import LocationIndex
from polder.common.outbox import Outgoing
from polder.common.settings import Settings
from polder.common.tasks import wait_for_event
from polder.common.topics import DISPATCH
from polder.dispatch.domain.availability import Availability, FreshIdle
from polder.dispatch.domain.matching import (
    Assignment,
    BatchResult,
    Decision,
    EtaProvider,
    MatchConfig,
    OpenOrder,
    assign_batch,
)
from polder.dispatch.domain.nearest import WorkerPoints
from polder.dispatch.domain.states import (
    Cause,
    OrderStatus,
    WorkerStatus,
    next_order_status,
    next_worker_status,
)
from polder.dispatch.domain.surge import SurgeModel, count_by_cell7
from polder.dispatch.handlers import Handlers, after_commit
from polder.dispatch.metrics import DispatchMetrics
from polder.dispatch.transitions import Conn, Rows, lock_many, order_event, settled, worker_event

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    considered: int
    offered: int
    result: BatchResult


# How long a batch waits for the relay to take its first part's offers before writing the next
# part: a round in flight when the part commits must finish first (its acks: 8-16 ms p50 / p90
# at 150 orders/s, up to ~75 ms seen), then the next one reads them.
HAND_OVER_WAIT_S = 0.05
# A part's orders and workers, offered: (keys, offer ids, times) per statement. ``= ANY``
# beside the join lets Postgres find the rows by key (see transitions.lock_many) rather than
# read the whole table to join it to unnest.
OFFER_ORDERS = (
    "UPDATE orders o SET status = 'offered', updated_at = u.at, "
    "offer_id = u.offer_id, first_offer_at = COALESCE(o.first_offer_at, u.at) "
    "FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) AS u(order_id, offer_id, at) "
    "WHERE o.order_id = u.order_id AND o.order_id = ANY($1)"
)
OFFER_WORKERS = (
    "UPDATE workers w SET status = 'offered', status_since = u.at, "
    "offer_id = u.offer_id, seq = w.seq + 1 "
    "FROM unnest($1::text[], $2::uuid[], $3::timestamptz[]) AS u(driver_id, offer_id, at) "
    "WHERE w.driver_id = u.driver_id AND w.driver_id = ANY($1)"
)


def match_config(settings: Settings) -> MatchConfig:
    return MatchConfig(
        max_radius_m=settings.max_pickup_radius_m,
        k_nearest=settings.candidates_per_order,
        fairness_tolerance_s=settings.fairness_tolerance_s,
        fairness_weight=settings.fairness_weight,
    )


class Matcher:
    def __init__(
        self,
        *,
        handlers: Handlers,
        positions: LocationIndex,
        eta: EtaProvider,
        settings: Settings,
        metrics: DispatchMetrics,
        surge: SurgeModel,
        availability: Availability,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.availability = availability
        # Told every batch's supply snapshot (the matcher process shares it with the API's
        # surge model, which prices the quotes).
        self.on_supply: Callable[[dict[int, int], float], None] | None = None
        self.handlers = handlers
        self.positions = positions
        # The idle workers' positions as arrays, for each batch's tree (see WorkerPoints).
        self.points = WorkerPoints.following(positions, availability)
        self.eta = eta
        self.settings = settings
        self.config = match_config(settings)
        self.metrics = metrics
        self.surge = surge
        self.clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        """One batch per window; a failed batch is logged and the next window tries again."""
        while not stop.is_set():
            started = self.clock()
            try:
                await self.run_once(datetime.fromtimestamp(started, UTC))
                await self.handlers.expire_offers(datetime.fromtimestamp(self.clock(), UTC))
                expired = await self.handlers.expire_orders(
                    datetime.fromtimestamp(self.clock(), UTC)
                )
                self.metrics.orders_expired.inc(expired)
            except Exception:
                log.exception("matching batch failed")
            wait = max(0.0, self.settings.batch_window_s - (self.clock() - started))
            await wait_for_event(stop, wait)

    async def run_once(self, now: datetime) -> BatchOutcome:
        pool = self.handlers.pool
        open_rows = await pool.fetch(
            "SELECT order_id, kind, pickup_lat, pickup_lng, created_at, ready_at, excluded, "
            "scheduled_for, first_offer_at FROM orders WHERE status = 'searching' "
            "AND (scheduled_for IS NULL OR scheduled_for <= $1) ORDER BY created_at LIMIT 5000",
            now + timedelta(seconds=self.settings.schedule_lead_s),
        )
        ts = now.timestamp()
        # Positions not renewed for the TTL leave the index (and the points' view), as in the
        # location service: no batch could use them, and the ring search would walk past them.
        self.positions.expire(ts)
        workers = FreshIdle(self.availability.idle, self.positions, ts, self.points)
        self.metrics.open_orders.set(len(open_rows))
        orders = [_open_order(r) for r in open_rows]
        started = time.perf_counter()
        result = assign_batch(orders, workers, self.positions, ts, self.config, self.eta)
        self.metrics.solve_time.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(orders))
        try:
            offered = (
                await self._apply(result, {str(r["order_id"]): r for r in open_rows}, now)
                if orders
                else 0
            )
        finally:
            # The supply census walks every available worker: after the offers are out, so it
            # is no part of any order's wait (see FreshIdle.cells); also when they failed.
            self._take_census(workers, result, ts)
        return BatchOutcome(len(orders), offered, result)

    def _take_census(self, workers: FreshIdle, result: BatchResult, ts: float) -> None:
        cells = workers.cells({a.driver_id for a in result.assignments})
        supply = count_by_cell7(cells)
        self.surge.observe_supply(supply, ts)
        if self.on_supply is not None:
            self.on_supply(supply, ts)
        self.metrics.available_workers.set(len(cells))

    async def load_availability(self) -> int:
        """Read every worker's state once (at start-up); events keep it current afterwards."""
        rows = await self.handlers.pool.fetch(
            "SELECT driver_id, seq, status, waiting_since FROM workers"
        )
        self.availability.load(
            (r["driver_id"], r["seq"], r["status"], _epoch(r["waiting_since"])) for r in rows
        )
        return len(rows)

    async def _apply(self, result: BatchResult, rows: Mapping[str, Any], batch_at: datetime) -> int:
        """Write the batch's offers and decisions, the oldest orders' first (see ``_parts``)."""
        started = time.perf_counter()
        batch_id = uuid.uuid4()
        made = 0
        try:
            parts = _parts(result, rows, self.settings.batch_first_offers)
            for i, (assignments, order_ids) in enumerate(parts):
                # built now, part by part (see assignment.Decisions)
                decided = [result.decisions[order_id] for order_id in order_ids]
                # Offers are stamped when they are written, not when the batch started: a
                # driver's 15 s to answer must not shrink by the time the batch took to solve.
                now = max(batch_at, datetime.fromtimestamp(self.clock(), UTC))
                offered = await self._apply_part(assignments, decided, batch_id, now)
                made += offered
                if offered and i < len(parts) - 1 and self.handlers.relay is not None:
                    # The relay (this process's) takes these offers before the next part's
                    # building holds the event loop (see OutboxRelay.handed_over).
                    await self.handlers.relay.handed_over(HAND_OVER_WAIT_S)
        finally:
            self.metrics.apply_time.observe(time.perf_counter() - started)
        return made

    async def _apply_part(
        self,
        assignments: list[Assignment],
        decided: list[Decision],
        batch_id: uuid.UUID,
        now: datetime,
    ) -> int:
        """These assignments as offers, and the decisions of these orders, all or nothing:
        optimistically first (rows read unlocked, the writes in one statement guarded by their
        versions; see ``transitions.lock_many``), in a transaction if a row changed meanwhile.
        Orders and workers no longer searching or idle are skipped either way."""

        async def step(conn: Conn, events: list[Outgoing]) -> int:
            return await self._write_part(conn, events, assignments, decided, batch_id, now)

        return await self.handlers.run(step, optimistic=True)

    async def _write_part(
        self,
        conn: Conn,
        events: list[Outgoing],
        assignments: list[Assignment],
        decided: list[Decision],
        batch_id: uuid.UUID,
        now: datetime,
    ) -> int:
        """One attempt at ``_apply_part`` (optimistic or in a transaction, as ``conn`` is)."""
        made = 0
        order_ids = [uuid.UUID(a.order_id) for a in assignments]
        searching = Rows("orders", "order_id", "uuid", order_ids, where="status = 'searching'")
        driver_ids = [a.driver_id for a in assignments]
        idle = Rows("workers", "driver_id", "text", driver_ids, where="status = 'idle'")
        locked_orders, workers = await lock_many(conn, searching, idle)
        orders = {str(order_id): row for order_id, row in locked_orders.items()}
        offers, order_updates, worker_updates = [], [], []
        to_offer: list[float] = []  # observed once this part commits (after_commit)
        etas: list[float] = []
        after_commit(functools.partial(_observe_all, self.metrics.order_to_offer, to_offer))
        after_commit(functools.partial(_observe_all, self.metrics.pickup_eta, etas))
        for a in assignments:
            order, worker = orders.get(a.order_id), workers.get(a.driver_id)
            if order is None or worker is None:
                continue  # cancelled, or the worker went offline, since the batch was read
            # No earlier than the order's and the worker's last change, which may have
            # committed after this batch took its clock (see transitions.move_worker).
            at = settled(now, worker, order)
            expires = at + timedelta(seconds=self.settings.offer_ttl_s)
            offer_id = uuid.uuid4()
            pay = self._estimated_pay(order["quote"])
            offers.append(
                (
                    offer_id,
                    order["order_id"],
                    a.driver_id,
                    at,
                    expires,
                    a.eta_s,
                    a.distance_m,
                    orjson.dumps(pay).decode(),
                )
            )
            order_updates.append((order["order_id"], offer_id, at))
            worker_updates.append((a.driver_id, offer_id, at))
            events += self._offer_events(order, worker, a, offer_id, pay, expires, batch_id, at)
            if order["first_offer_at"] is None:
                to_offer.append((now - order["created_at"]).total_seconds())
            etas.append(a.eta_s)
            made += 1
        after_commit(functools.partial(self.metrics.offers.labels("made").inc, made))
        # One statement per table for the whole part, all held and sent together with the
        # outbox rows (common.deferred): row by row, a 200-order batch spent most of a
        # second in round trips. They carry no row keys: nothing else in this transaction
        # writes these rows (a move_* call added here would need a flush first).
        conn.defer(OFFER_ORDERS, *_columns(order_updates, 3))
        conn.defer(OFFER_WORKERS, *_columns(worker_updates, 3))
        conn.defer(
            "INSERT INTO offers (offer_id, order_id, driver_id, status, created_at, "
            "expires_at, pickup_eta_s, pickup_distance_m, estimated_pay) "
            "SELECT o, r, d, 'pending', c, e, eta, dist, pay::jsonb FROM unnest("
            "$1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::timestamptz[], "
            "$6::float8[], $7::float8[], $8::text[]) AS u(o, r, d, c, e, eta, dist, pay)",
            *_columns(offers, 8),
        )
        decisions = [(uuid.UUID(d.order_id), orjson.dumps(d.to_dict()).decode()) for d in decided]
        conn.defer(
            "INSERT INTO decisions (order_id, batch_id, decided_at, decision) "
            "SELECT o, $2, $3, d::json FROM unnest($1::uuid[], $4::text[]) AS u(o, d)",
            [d[0] for d in decisions],
            batch_id,
            now,
            [d[1] for d in decisions],
        )
        return made

    def _offer_events(
        self,
        order: Any,
        worker: Any,
        a: Any,
        offer_id: uuid.UUID,
        pay: dict[str, Any],
        expires: datetime,
        batch_id: uuid.UUID,
        now: datetime,
    ) -> list[Outgoing]:
        """The events of one offer, from the locked rows (the states are checked here)."""
        bus = self.handlers.bus
        order_after = next_order_status(OrderStatus(order["status"]), Cause.OFFER_SENT)
        worker_after = next_worker_status(WorkerStatus(worker["status"]), Cause.OFFER_SENT)
        made = bus.event(
            "polder.dispatch.offer_made.v1",
            a.order_id,
            {
                "offer_id": str(offer_id),
                "order_id": a.order_id,
                "driver_id": a.driver_id,
                "expires_at": format_time(expires),
                "pickup_eta_s": a.eta_s,
                "pickup_distance_m": a.distance_m,
                "estimated_pay": pay,
                "batch_id": str(batch_id),
            },
            now,
        )
        return [
            order_event(
                bus,
                order["order_id"],
                OrderStatus(order["status"]),
                order_after,
                Cause.OFFER_SENT,
                now,
                offer_id=offer_id,
            ),
            worker_event(
                bus,
                a.driver_id,
                worker["seq"] + 1,
                WorkerStatus(worker["status"]),
                worker_after,
                Cause.OFFER_SENT,
                now,
                offer_id=offer_id,
                order_id=order["order_id"],
                kind=order["kind"],
            ),
            (DISPATCH, a.order_id, made),
        ]

    def _estimated_pay(self, quote: Mapping[str, Any]) -> dict[str, Any]:
        share = Decimal(str(self.settings.driver_share))
        amount = int((Decimal(quote["amount_minor"]) * share).to_integral_value())
        return {"currency": quote["currency"], "amount_minor": amount}


def _observe_all(histogram: Histogram, values: list[float]) -> None:
    for value in values:
        histogram.observe(value)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _open_order(r: Any) -> OpenOrder:
    return OpenOrder(
        order_id=str(r["order_id"]),
        kind=r["kind"],
        pickup_lat=r["pickup_lat"],
        pickup_lng=r["pickup_lng"],
        created_at=r["created_at"].timestamp(),
        ready_at=r["ready_at"].timestamp() if r["ready_at"] else None,
        excluded=frozenset(r["excluded"]),
    )


def _parts(
    result: BatchResult, rows: Mapping[str, Any], first: int
) -> list[tuple[list[Assignment], list[str]]]:
    """The batch's writes in parts, each all or nothing (see ``_apply_part``): (assignments,
    the orders whose decisions go along).

    An order that arrived just after the previous batch read its orders has waited a whole
    window when this batch starts, so only such orders can wait for a first offer beyond the
    window, by as long as this batch takes; an order that arrived later has that much more
    time. So the assignments go oldest first (by how long each order has waited for a first
    offer, see ``_first_offer_wait``): the ``first`` of them in a part of their own, then
    parts each twice the size of the one before, each published while the next is written.
    A part's write takes time in proportion to its size, and the orders of the next one
    arrived later by as much again (at 200 orders/s, 32 orders are 0.16 s of arrivals): in
    one part after the first, the younger orders' offers waited for all the rest, and on a
    busy box that wait went past their window. Every other decision (orders deferred or left
    unmatched) goes with the last part. Each part stamps its offers and decisions when it is
    written, so one ``batch_id`` may carry several ``decided_at``. ``first`` 0: one part.
    """
    decided = [order_id for order_id in result.decisions if order_id in rows]
    if not 0 < first < len(result.assignments):
        return [(result.assignments, decided)]
    ranked = sorted(result.assignments, key=lambda a: _first_offer_wait(rows[a.order_id]))
    chunks: list[list[Assignment]] = []
    size = first
    while ranked:
        chunks.append(ranked[:size])
        ranked = ranked[size:]
        size *= 2
    part_of = {a.order_id: i for i, chunk in enumerate(chunks) for a in chunk}
    last = len(chunks) - 1
    decisions: list[list[str]] = [[] for _ in chunks]
    for order_id in decided:
        decisions[part_of.get(order_id, last)].append(order_id)
    return list(zip(chunks, decisions, strict=True))


def _first_offer_wait(row: Any) -> tuple[bool, datetime, str]:
    """Sort key: orders waiting for their first offer since they were placed, oldest first;
    then the others (offered before and searching again, or scheduled: their wait is not
    counted from ``created_at``)."""
    waiting = row["first_offer_at"] is None and row["scheduled_for"] is None
    return (not waiting, row["created_at"], str(row["order_id"]))


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as ``width`` column lists (for ``unnest``), empty columns for no rows."""
    return [list(c) for c in zip(*rows, strict=True)] or [[] for _ in range(width)]
