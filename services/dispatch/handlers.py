"""Dispatch use cases: load and lock state → decide with the domain → persist + outbox, in one
transaction each. Races between accept, decline, expiry and cancel are settled by row locks.

The use cases a request asks for are steps ``(conn, events, ...)``: ``run`` gives one a
transaction of its own, ``run_once`` one shared with its Idempotency-Key and stored answer."""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import structlog

from polder.common.bus import Bus
from polder.common.db import Pool
from polder.common.deferred import RUN_LOCKED, Tx, why_locked
from polder.common.errors import ApiError
from polder.common.idempotency import Outcome, run_once
from polder.common.outbox import OutboxRelay, Outgoing, add_to_outbox
from polder.dispatch.domain.availability import Availability
from polder.dispatch.domain.states import (
    ON_A_JOB,
    STATUS_REQUESTS,
    TRIP_STEPS,
    Cause,
    IllegalTransition,
    OrderStatus,
    WorkerStatus,
)
from polder.dispatch.metrics import DispatchMetrics
from polder.dispatch.transitions import (
    Conn,
    Row,
    lock_joined,
    lock_offer,
    lock_order,
    lock_worker,
    move_order,
    move_worker,
    release_offer,
    resolve_offer,
    settled,
)

T = TypeVar("T")
log = structlog.get_logger(__name__)

# What the running step asked to do once its transaction commits (see ``after_commit``).
_ON_COMMIT: ContextVar[list[Callable[[], None]] | None] = ContextVar(
    "dispatch_on_commit", default=None
)


def after_commit(action: Callable[[], None]) -> None:
    """Run ``action`` when the transaction of the step calling this commits: never for an
    attempt that is rolled back, undone by a race and run again, or answered from a stored
    Idempotency-Key. For what must not count twice, such as a latency observed."""
    pending = _ON_COMMIT.get()
    if pending is None:
        raise RuntimeError("after_commit outside a dispatch transaction")
    pending.append(action)


@contextlib.contextmanager
def _commit_actions() -> Iterator[list[Callable[[], None]]]:
    """Collect what the code run inside asks ``after_commit`` to do; the caller runs the
    list if, and only if, its transaction committed."""
    actions: list[Callable[[], None]] = []
    token = _ON_COMMIT.set(actions)
    try:
        yield actions
    finally:
        _ON_COMMIT.reset(token)


Step = Callable[[Conn, list[Outgoing]], Awaitable[T]]
Answer = tuple[int, dict[str, Any]]  # status and JSON body of a response

STATUS_TARGET = {
    "online": WorkerStatus.IDLE,
    "offline": WorkerStatus.OFFLINE,
    "break": WorkerStatus.BREAK,
}


class NotFound(ApiError):
    def __init__(self, what: str) -> None:
        super().__init__(404, "not_found", f"{what} not found")


def conflict(exc: IllegalTransition) -> ApiError:
    return ApiError(
        409, "illegal_transition", str(exc), current_state=exc.current, attempted=exc.cause.value
    )


@dataclass(frozen=True, slots=True)
class TripStepResult:
    trip_id: str
    order_id: str
    worker_status: str
    order_status: str


class Handlers:
    def __init__(
        self,
        pool: Pool,
        bus: Bus,
        relay: OutboxRelay | None,
        metrics: DispatchMetrics,
        availability: Availability | None = None,
    ) -> None:
        """``relay``: this process's outbox relay, woken after each commit (None: another
        process relays). ``availability``: the matcher's view, kept current by every commit
        made here (None: this process does not match)."""
        self.pool = pool
        self.availability = availability
        self.bus = bus
        self.relay = relay
        self.metrics = metrics

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, optimistic: bool = False
    ) -> AsyncIterator[tuple[Conn, list[Outgoing]]]:
        """A transaction whose collected events go to the outbox with it, then to the relay.
        ``optimistic``: no transaction, one guarded statement (common.deferred)."""
        events: list[Outgoing] = []
        try:
            with _commit_actions() as actions:
                async with self.pool.acquire() as conn:
                    begun = contextlib.nullcontext() if optimistic else conn.transaction()
                    async with begun:
                        tx = Tx(conn, optimistic=optimistic)
                        yield tx, events
                        await add_to_outbox(tx, self.bus, events)
                        await tx.send()
        except IllegalTransition as exc:
            raise conflict(exc) from exc
        self._after_commit(events, actions)

    async def run(self, step: Step[T], *, optimistic: bool = False) -> T:
        """One step in a transaction of its own. ``optimistic``: first without a transaction,
        its rows read unlocked and its writes sent in one statement that applies only if none
        of those rows changed meanwhile (common.deferred); else, or if the step needs what only
        a transaction gives, again in a transaction."""
        if optimistic:
            try:
                async with self.transaction(optimistic=True) as (conn, events):
                    result = await step(conn, events)
            except RUN_LOCKED as exc:
                self.count_optimistic(why_locked(exc))
            else:
                self.count_optimistic("applied")
                return result
        async with self.transaction() as (conn, events):
            return await step(conn, events)

    async def run_once(
        self,
        principal: str,
        key: str,
        digest: str,
        step: Step[Answer],
        *,
        optimistic: bool = False,
    ) -> Outcome:
        """One step at most once per (principal, Idempotency-Key): its answer is stored in its
        transaction, and a retry gets the stored answer (common.idempotency; ``optimistic`` as
        for ``run``)."""
        committed: list[Outgoing] = []
        actions: list[Callable[[], None]] = []

        async def effect(conn: Tx) -> Answer:
            committed.clear()  # of an attempt rolled back for a concurrent twin
            actions.clear()
            events: list[Outgoing] = []
            with _commit_actions() as asked:
                try:
                    answer = await step(conn, events)
                except IllegalTransition as exc:
                    raise conflict(exc) from exc  # a refusal, maybe stored: nothing of it is done
            await add_to_outbox(conn, self.bus, events)
            committed.extend(events)
            actions.extend(asked)
            return answer

        outcome = await run_once(
            self.pool,
            principal,
            key,
            digest,
            effect,
            optimistic=optimistic,
            report=self.count_optimistic,
        )
        if not outcome.replayed:
            self._after_commit(committed, actions)
        return outcome

    def count_optimistic(self, outcome: str) -> None:
        """Count how an optimistic step ended (applied, changed, needs_lock)."""
        self.metrics.optimistic_steps.labels(outcome).inc()

    def _after_commit(self, events: list[Outgoing], actions: list[Callable[[], None]]) -> None:
        """Wake the relay, count offers by outcome, keep the available workers current and
        do what the step asked to (``after_commit``)."""
        if events and self.relay is not None:
            self.relay.notify()
        for _, _, event in events:
            if event.type == "polder.driver.state_changed.v1":
                if self.availability is not None:
                    self.availability.apply_event(event.data, event.time.timestamp())
            elif event.type == "polder.dispatch.offer_resolved.v1":
                self.metrics.offers.labels(event.data["outcome"]).inc()
        for action in actions:
            try:
                action()
            except Exception:  # what committed stands: a failed observation is only logged
                log.exception("after-commit action failed")

    # --- workers -------------------------------------------------------------------------

    async def set_status(
        self, conn: Conn, events: list[Outgoing], driver_id: str, requested: str, now: datetime
    ) -> str:
        target = STATUS_TARGET[requested]
        order = await self._order_of_pending_offer(conn, driver_id)
        worker = await lock_worker(conn, driver_id, now)
        status = WorkerStatus(worker["status"])
        if status is target or (target is WorkerStatus.IDLE and status in _ONLINE):
            return str(status.value)  # already there: a retried request changes nothing
        if status in ON_A_JOB:
            raise IllegalTransition("worker", status.value, STATUS_REQUESTS[requested])
        if status is WorkerStatus.OFFERED:
            if order is None or order["offer_id"] != worker["offer_id"]:
                raise ApiError(409, "retry", "the offer changed meanwhile; retry")
            offer = await lock_offer(conn, worker["offer_id"])
            assert offer is not None
            now = settled(now, order, offer, worker)
            _, worker, released = release_offer(
                conn, self.bus, order, offer, worker, "declined", now
            )
            events += released
        worker, event = move_worker(conn, self.bus, worker, STATUS_REQUESTS[requested], now)
        events.append(event)
        return str(worker["status"])

    async def _order_of_pending_offer(self, conn: Conn, driver_id: str) -> Row | None:
        """Lock the order a worker holds an offer for, before the worker (lock order)."""
        order_id = await conn.fetchval(
            "SELECT o.order_id FROM workers w JOIN offers o ON o.offer_id = w.offer_id "
            "WHERE w.driver_id = $1 AND w.status = 'offered'",
            driver_id,
        )
        return None if order_id is None else await lock_order(conn, order_id)

    async def pending_offers(self, driver_id: str, now: datetime) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT f.*, o.kind, o.pickup_lat, o.pickup_lng, o.dropoff_lat, o.dropoff_lng "
            "FROM offers f JOIN orders o USING (order_id) "
            "WHERE f.driver_id = $1 AND f.status = 'pending' AND f.expires_at > $2 "
            "ORDER BY f.created_at",
            driver_id,
            now,
        )
        return [offer_view(r) for r in rows]

    # --- offers --------------------------------------------------------------------------

    async def accept(
        self, conn: Conn, events: list[Outgoing], offer_id: uuid.UUID, driver_id: str, now: datetime
    ) -> dict[str, str]:
        order, offer, worker = await self._lock_pending_offer(conn, offer_id, driver_id)
        if offer["expires_at"] <= now:
            raise ApiError(409, "offer_closed", "offer has expired", current_state="expired")
        now = settled(now, order, offer, worker)
        trip_id = uuid.uuid4()
        events.append(resolve_offer(conn, self.bus, offer, "accepted", now, trip_id))
        conn.defer(
            "INSERT INTO trips (trip_id, order_id, driver_id, status, accepted_at, "
            "promised_eta_s) VALUES ($1, $2, $3, 'en_route_pickup', $4, $5)",
            trip_id,
            order["order_id"],
            driver_id,
            now,
            offer["pickup_eta_s"],
        )
        after_commit(
            functools.partial(
                self.metrics.order_to_assignment.observe,
                (now - order["created_at"]).total_seconds(),
            )
        )
        _, order_event = move_order(
            conn,
            self.bus,
            order,
            Cause.OFFER_ACCEPTED,
            now,
            driver_id=driver_id,
            trip_id=trip_id,
            offer_id=None,
            assigned_at=now,
            pickup_eta_s=offer["pickup_eta_s"],
        )
        _, worker_event = move_worker(
            conn,
            self.bus,
            worker,
            Cause.OFFER_ACCEPTED,
            now,
            trip_id=trip_id,
            order_id=order["order_id"],
            kind=order["kind"],
        )
        events += [order_event, worker_event]
        return {"trip_id": str(trip_id), "order_id": str(order["order_id"])}

    async def decline(
        self, conn: Conn, events: list[Outgoing], offer_id: uuid.UUID, driver_id: str, now: datetime
    ) -> None:
        order, offer, worker = await self._lock_pending_offer(conn, offer_id, driver_id)
        now = settled(now, order, offer, worker)
        _, _, released = release_offer(conn, self.bus, order, offer, worker, "declined", now)
        events += released

    async def _lock_pending_offer(
        self, conn: Conn, offer_id: uuid.UUID, driver_id: str
    ) -> tuple[Row, Row, Row]:
        """Lock the offer's order, the offer and its worker (one round trip); 404 if it is not
        this driver's, 409 if it was already answered, expired or withdrawn."""
        rows = await lock_joined(
            conn,
            "orders o, offers f, workers w",
            "f.offer_id = $1 AND f.driver_id = $2 AND o.order_id = f.order_id "
            "AND w.driver_id = f.driver_id",
            offer_id,
            driver_id,
        )
        if rows is None:
            raise NotFound("offer")  # another driver's offer does not exist for this one
        order, offer, worker = rows
        if offer["status"] != "pending":
            raise ApiError(
                409, "offer_closed", f"offer is {offer['status']}", current_state=offer["status"]
            )
        return order, offer, worker

    async def expire_offers(self, now: datetime, limit: int = 500) -> int:
        due = await self.pool.fetch(
            "SELECT offer_id, order_id, driver_id FROM offers WHERE status = 'pending' "
            "AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
            now,
            limit,
        )
        expired = 0
        for row in due:
            async with self.transaction() as (conn, events):
                order = await lock_order(conn, row["order_id"])
                offer = await lock_offer(conn, row["offer_id"])
                if order is None or offer is None or offer["status"] != "pending":
                    continue  # accepted or declined meanwhile: that answer won
                worker = await lock_worker(conn, row["driver_id"], now)
                at = settled(now, order, offer, worker)
                _, _, released = release_offer(conn, self.bus, order, offer, worker, "expired", at)
                events += released
                expired += 1
        return expired

    async def expire_orders(self, now: datetime, limit: int = 500) -> int:
        due = await self.pool.fetch(
            "SELECT order_id FROM orders WHERE status = 'searching' AND search_deadline <= $1 "
            "LIMIT $2",
            now,
            limit,
        )
        expired = 0
        for row in due:
            async with self.transaction() as (conn, events):
                order = await lock_order(conn, row["order_id"])
                if order is None or order["status"] != OrderStatus.SEARCHING.value:
                    continue
                _, event = move_order(
                    conn, self.bus, order, Cause.SEARCH_TIMED_OUT, now, reason="no driver found"
                )
                events.append(event)
                expired += 1
        return expired

    # --- trips ---------------------------------------------------------------------------

    async def trip_step(
        self,
        conn: Conn,
        events: list[Outgoing],
        trip_id: uuid.UUID,
        driver_id: str,
        step: str,
        reason: str | None,
        now: datetime,
    ) -> TripStepResult:
        cause = TRIP_STEPS[step]
        rows = await lock_joined(
            conn,
            "trips t, orders o, workers w",
            "t.trip_id = $1 AND t.driver_id = $2 AND o.order_id = t.order_id "
            "AND w.driver_id = t.driver_id",
            trip_id,
            driver_id,
            read=frozenset({"t"}),  # trips are written after the order and worker are locked
        )
        if rows is None:
            raise NotFound("trip")  # another driver's trip does not exist for this one
        trip, order, worker = rows
        now = settled(now, order, worker)
        if worker["trip_id"] != trip_id:
            # The trip row was read, not locked, with the others: a cancel the locks waited for
            # (in a transaction) may have changed it since. Read it again (a new snapshot) to
            # say what it is now.
            status = await conn.fetchval("SELECT status FROM trips WHERE trip_id = $1", trip_id)
            raise ApiError(409, "illegal_transition", f"trip is {status}", current_state=status)
        # The driver's state is checked first: a refused step reports the driver's state.
        worker, worker_event = move_worker(
            conn,
            self.bus,
            worker,
            cause,
            now,
            trip_id=trip_id,
            order_id=order["order_id"],
            kind=order["kind"],
        )
        order, order_event = move_order(conn, self.bus, order, cause, now, reason=reason)
        self._record_trip_step(conn, trip_id, cause, worker["status"], now, reason)
        events += [order_event, worker_event]
        return TripStepResult(
            str(trip_id), str(order["order_id"]), worker["status"], order["status"]
        )

    def _record_trip_step(
        self,
        conn: Conn,
        trip_id: uuid.UUID,
        cause: Cause,
        worker_status: str,
        now: datetime,
        reason: str | None,
    ) -> None:
        column = {
            Cause.ARRIVED_PICKUP: "arrived_pickup_at",
            Cause.PICKED_UP: "picked_up_at",
            Cause.ARRIVED_DROPOFF: "arrived_dropoff_at",
        }.get(cause, "ended_at")
        status = worker_status if column != "ended_at" else cause.value
        conn.defer(
            f"UPDATE trips SET {column} = $2, status = $3, "  # noqa: S608 (fixed column names)
            "end_reason = COALESCE($4, end_reason) WHERE trip_id = $1",
            trip_id,
            now,
            status,
            reason if column == "ended_at" else None,
            row=("trips", trip_id),
        )

    # --- orders --------------------------------------------------------------------------

    async def cancel_order(
        self,
        conn: Conn,
        events: list[Outgoing],
        order_id: uuid.UUID,
        customer_id: str | None,
        now: datetime,
    ) -> str:
        """Cancel on behalf of the order's customer (or an operator, ``customer_id=None``)."""
        order = await lock_order(conn, order_id)
        if order is None or (customer_id is not None and order["customer_id"] != customer_id):
            raise NotFound("order")
        status = OrderStatus(order["status"])
        cause = Cause.CANCELLED_BY_CUSTOMER
        if status is OrderStatus.OFFERED:
            offer = await lock_offer(conn, order["offer_id"])
            assert offer is not None
            worker = await lock_worker(conn, offer["driver_id"], now)
            now = settled(now, order, offer, worker)
            events.append(resolve_offer(conn, self.bus, offer, "withdrawn", now))
            _, w_event = move_worker(
                conn,
                self.bus,
                worker,
                Cause.OFFER_WITHDRAWN,
                now,
                order_id=order_id,
                kind=order["kind"],
            )
            events.append(w_event)
        elif status in (OrderStatus.ASSIGNED, OrderStatus.DRIVER_ARRIVED):
            worker = await lock_worker(conn, order["driver_id"], now)
            now = settled(now, order, worker)
            _, w_event = move_worker(
                conn,
                self.bus,
                worker,
                cause,
                now,
                trip_id=order["trip_id"],
                order_id=order_id,
                kind=order["kind"],
            )
            events.append(w_event)
            self._record_trip_step(conn, order["trip_id"], cause, "", now, cause.value)
        order, o_event = move_order(
            conn, self.bus, order, cause, now, offer_id=None, reason="cancelled by customer"
        )
        events.append(o_event)
        return str(order["status"])


_ONLINE = frozenset({WorkerStatus.IDLE, WorkerStatus.OFFERED})


def offer_view(r: Row) -> dict[str, Any]:
    return {
        "offer_id": str(r["offer_id"]),
        "order_id": str(r["order_id"]),
        "kind": r["kind"],
        "pickup": {"lat": r["pickup_lat"], "lng": r["pickup_lng"]},
        "dropoff": {"lat": r["dropoff_lat"], "lng": r["dropoff_lng"]},
        "expires_at": r["expires_at"],
        "pickup_eta_s": round(r["pickup_eta_s"], 1),
        "pickup_distance_m": round(r["pickup_distance_m"], 1),
        "estimated_pay": r["estimated_pay"],
    }
