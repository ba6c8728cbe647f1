"""Dispatch HTTP and WebSocket routes: parse, authorize, call a handler."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute

from polder.common.auth import (
    CurrentPrincipal,
    Principal,
    Role,
    bearer_token,
    require_role,
    require_self,
    verify_token,
)
from polder.common.errors import ApiError
from polder.common.http import ORJSONResponse
from polder.common.idempotency import check_key, request_hash, run_once
from polder.common.outbox import Outgoing, add_to_outbox
from polder.dispatch.handlers import Answer, NotFound, Step
from polder.dispatch.models import (
    AcceptOut,
    CancelOut,
    DecisionsOut,
    DeclineOut,
    OffersOut,
    OrderCreated,
    OrderIn,
    OrderOut,
    StatusIn,
    StatusOut,
    TripEventIn,
    TripEventOut,
)
from polder.dispatch.orders import order_view
from polder.dispatch.runtime import DispatchRuntime

router = APIRouter(prefix="/v1")

DriverId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
ERRORS: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 409: {}, 422: {}}
KEY_DOC = (
    "Makes a retry safe: the first answer to a key (success, 404 or 409) is stored and "
    "replayed for the same request; the same key with another request is a 422. Keys are "
    "the caller's own (scoped per token subject and role)."
)
IdempotencyKey = Annotated[str | None, Header(description=KEY_DOC)]


def _rt(request: Request | WebSocket) -> DispatchRuntime:
    rt: DispatchRuntime = request.app.state.runtime
    return rt


def _now() -> datetime:
    return datetime.now(UTC)


async def _answer(
    request: Request,
    principal: Principal,
    key: str | None,
    body: Any,
    step: Step[Answer],
    *,
    optimistic: bool = False,
) -> JSONResponse:
    """Run a state-changing step; with an Idempotency-Key, at most once per key.
    ``optimistic``: see ``Handlers.run``."""
    handlers = _rt(request).handlers
    if key is None:
        status, response = await handlers.run(step, optimistic=optimistic)
    else:
        digest = request_hash(request.method, request.url.path, body)
        outcome = await handlers.run_once(
            principal.key, check_key(key), digest, step, optimistic=optimistic
        )
        status, response = outcome.status, outcome.body
    return ORJSONResponse(response, status_code=status)


@router.post("/drivers/{driver_id}/status", response_model=StatusOut, responses=ERRORS)
async def set_status(
    driver_id: DriverId,
    body: StatusIn,
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Go online, offline or on a break. Going offline with an open offer declines it."""
    require_self(principal, Role.DRIVER, driver_id)
    handlers, now = _rt(request).handlers, _now()

    async def step(conn: Any, events: list[Outgoing]) -> Answer:
        status = await handlers.set_status(conn, events, driver_id, body.status, now)
        return 200, StatusOut(driver_id=driver_id, status=status).model_dump(mode="json")

    return await _answer(request, principal, idempotency_key, body.model_dump(mode="json"), step)


@router.get("/drivers/{driver_id}/offers", response_model=OffersOut, responses=ERRORS)
async def offers(
    driver_id: DriverId, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """The driver's pending offers."""
    require_self(principal, Role.DRIVER, driver_id)
    return {"offers": await _rt(request).handlers.pending_offers(driver_id, _now())}


@router.websocket("/drivers/{driver_id}/feed")
async def feed(websocket: WebSocket, driver_id: str) -> None:
    """Pushes ``{"type": "offer", "offer": {...}}`` as offers are made; pending ones on connect."""
    rt = _rt(websocket)
    await websocket.accept()
    try:
        token = websocket.query_params.get("token") or bearer_token(
            websocket.headers.get("authorization")
        )
        require_self(verify_token(rt.settings, token), Role.DRIVER, driver_id)
    except ApiError as err:
        await websocket.send_text(orjson.dumps(err.body()).decode())
        await websocket.close(code=4000 + err.status)
        return
    with rt.feed.subscribe(driver_id) as queue:
        for offer in await rt.handlers.pending_offers(driver_id, _now()):
            await websocket.send_text(orjson.dumps({"type": "offer", "offer": offer}).decode())
        receiver = asyncio.create_task(_drain(websocket))
        try:
            while not receiver.done():
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getter, receiver}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    await websocket.send_text(orjson.dumps(getter.result()).decode())
                else:
                    getter.cancel()
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await receiver


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client frames until it disconnects."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.receive_text()


@router.post("/offers/{offer_id}/accept", response_model=AcceptOut, responses=ERRORS)
async def accept(
    offer_id: uuid.UUID,
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Accept an offer: exactly one of concurrent accept / expire / cancel wins."""
    require_role(principal, Role.DRIVER)
    handlers, now = _rt(request).handlers, _now()

    async def step(conn: Any, events: list[Outgoing]) -> Answer:
        return 200, await handlers.accept(conn, events, offer_id, principal.sub, now)

    return await _answer(request, principal, idempotency_key, None, step, optimistic=True)


@router.post("/offers/{offer_id}/decline", response_model=DeclineOut, responses=ERRORS)
async def decline(
    offer_id: uuid.UUID,
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Decline an offer; the order is offered to someone else."""
    require_role(principal, Role.DRIVER)
    handlers, now = _rt(request).handlers, _now()

    async def step(conn: Any, events: list[Outgoing]) -> Answer:
        await handlers.decline(conn, events, offer_id, principal.sub, now)
        return 200, DeclineOut(offer_id=str(offer_id), status="declined").model_dump(mode="json")

    return await _answer(request, principal, idempotency_key, None, step, optimistic=True)


@router.post("/trips/{trip_id}/events", response_model=TripEventOut, responses=ERRORS)
async def trip_event(
    trip_id: uuid.UUID,
    body: TripEventIn,
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Report a trip step: arrived_pickup, picked_up, arrived_dropoff, completed or cancelled."""
    require_role(principal, Role.DRIVER)
    handlers, now = _rt(request).handlers, _now()

    async def step(conn: Any, events: list[Outgoing]) -> Answer:
        r = await handlers.trip_step(
            conn, events, trip_id, principal.sub, body.type, body.reason, now
        )
        out = TripEventOut(
            trip_id=r.trip_id,
            order_id=r.order_id,
            driver_status=r.worker_status,
            order_status=r.order_status,
        )
        return 200, out.model_dump(mode="json")

    return await _answer(
        request, principal, idempotency_key, body.model_dump(mode="json"), step, optimistic=True
    )


@router.post(
    "/orders",
    status_code=201,
    response_model=OrderCreated,
    responses={**ERRORS, 400: {"description": "missing or invalid Idempotency-Key"}},
    openapi_extra={"x-idempotency-key-required": True},
)
async def place_order(
    body: OrderIn,
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Place a ride or delivery order; a retry with the same Idempotency-Key gets the same."""
    require_role(principal, Role.CUSTOMER)
    key = check_key(idempotency_key)
    rt = _rt(request)
    now = _now()
    digest = request_hash("POST", "/v1/orders", body.model_dump(mode="json"))
    emitted: list[Any] = []

    async def effect(conn: Any) -> tuple[int, dict[str, Any]]:
        status, response, events = await rt.desk.place(conn, principal.sub, body, now)
        emitted[:] = events  # of the attempt that commits
        await add_to_outbox(conn, rt.bus, events)
        return status, response

    outcome = await run_once(
        rt.handlers.pool,
        principal.key,
        key,
        digest,
        effect,
        optimistic=True,  # placing reads nothing: one round trip
        report=rt.handlers.count_optimistic,
    )
    if emitted and not outcome.replayed:  # a new order, not the stored answer to a retry
        rt.desk.record_demand(body, now)
        rt.metrics.orders_placed.labels(body.kind).inc()
        if rt.handlers.relay is not None:
            rt.handlers.relay.notify()
    return ORJSONResponse(outcome.body, status_code=outcome.status)


async def _order_for(request: Request, principal: Any, order_id: uuid.UUID) -> Any:
    row = await _rt(request).handlers.pool.fetchrow(
        "SELECT * FROM orders WHERE order_id = $1", order_id
    )
    if row is None:
        raise NotFound("order")
    if principal.role is Role.OPERATOR:
        return row
    if principal.role is Role.CUSTOMER and row["customer_id"] == principal.sub:
        return row
    if principal.role is Role.DRIVER and row["driver_id"] == principal.sub:
        return row
    raise NotFound("order")  # someone else's order does not exist for this caller


@router.get("/orders/{order_id}", response_model=OrderOut, responses=ERRORS)
async def get_order(
    order_id: uuid.UUID, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """An order: its customer, its assigned driver, or an operator."""
    return order_view(await _order_for(request, principal, order_id))


@router.post("/orders/{order_id}/cancel", response_model=CancelOut, responses=ERRORS)
async def cancel_order(
    order_id: uuid.UUID,
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Cancel an order (its customer, or an operator). An open offer is withdrawn."""
    require_role(principal, Role.CUSTOMER, Role.OPERATOR)
    customer = None if principal.role is Role.OPERATOR else principal.sub
    handlers, now = _rt(request).handlers, _now()

    async def step(conn: Any, events: list[Outgoing]) -> Answer:
        status = await handlers.cancel_order(conn, events, order_id, customer, now)
        return 200, CancelOut(order_id=str(order_id), status=status).model_dump(mode="json")

    return await _answer(request, principal, idempotency_key, None, step)


@router.get("/orders/{order_id}/decisions", response_model=DecisionsOut, responses=ERRORS)
async def decisions(
    order_id: uuid.UUID, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """Every matching round that considered this order: candidates, costs, choice and reason."""
    require_role(principal, Role.OPERATOR)
    pool = _rt(request).handlers.pool
    if await pool.fetchval("SELECT 1 FROM orders WHERE order_id = $1", order_id) is None:
        raise NotFound("order")
    rows = await pool.fetch(
        "SELECT batch_id, decided_at, decision FROM decisions WHERE order_id = $1 ORDER BY id",
        order_id,
    )
    return {
        "order_id": str(order_id),
        "decisions": [
            {
                "batch_id": str(r["batch_id"]),
                "decided_at": r["decided_at"],
                "decision": r["decision"],
            }
            for r in rows
        ],
    }


# A request is matched against the routes in order, each passed over costing a regular-expression
# match (twice: once to choose the router, once inside it): the routes most requests take come
# first. Order does not change which route answers, as no two of these paths match one request
# (tests/unit/test_dispatch_routes.py).
BUSIEST_FIRST = (
    "/v1/orders",
    "/v1/offers/{offer_id}/accept",
    "/v1/trips/{trip_id}/events",
    "/v1/offers/{offer_id}/decline",
    "/v1/drivers/{driver_id}/status",
    "/v1/drivers/{driver_id}/offers",
    "/v1/orders/{order_id}",
)


def _traffic_rank(route: BaseRoute) -> int:
    path = getattr(route, "path", "")
    return BUSIEST_FIRST.index(path) if path in BUSIEST_FIRST else len(BUSIEST_FIRST)


router.routes.sort(key=_traffic_rank)
