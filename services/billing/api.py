"""Billing routes: statements for workers and operators, trip fares for both parties."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from polder.billing import export
from polder.billing.domain.policies import PolicyName
from polder.billing.runtime import BillingRuntime
from polder.billing.statements import parse_range
from polder.common.auth import (
    CurrentPrincipal,
    ReportingPrincipal,
    Role,
    require_role,
    require_self_or_operator,
)
from polder.common.errors import ApiError
from polder.common.http import ORJSONResponse
from polder.common.timerange import parse_range as parse_export_range

router = APIRouter(prefix="/v1")
DriverId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
ERRORS: dict[int | str, dict[str, Any]] = {401: {}, 403: {}, 404: {}, 422: {}}
RANGE_DOC = "RFC 3339 with a UTC offset; by default the current UTC day; at most 62 days"


def _rt(request: Request) -> BillingRuntime:
    rt: BillingRuntime = request.app.state.runtime
    return rt


@router.get(
    "/drivers/{driver_id}/statement",
    responses={**ERRORS, 200: {"content": {"application/json": {}, "text/csv": {}}}},
)
async def statement(
    driver_id: DriverId,
    request: Request,
    principal: CurrentPrincipal,
    start: Annotated[str | None, Query(alias="from", description=RANGE_DOC)] = None,
    end: Annotated[str | None, Query(alias="to", description=RANGE_DOC)] = None,
    policy: Annotated[PolicyName | None, Query()] = None,
) -> Response:
    """A worker's time and money over a range under a pay policy (any policy can be asked
    for, to compare rules on the same record). The worker itself, or an operator."""
    require_self_or_operator(principal, driver_id)
    rt = _rt(request)
    now = datetime.now(UTC)
    a, b = parse_range(start, end, now)
    chosen = policy.value if policy else rt.settings.default_policy
    result = await rt.statements.statement(driver_id, a, b, chosen, now)
    rt.metrics.waiting_seconds.labels(chosen, "yes").inc(result.paid_waiting_ms / 1000)
    rt.metrics.waiting_seconds.labels(chosen, "no").inc(result.unpaid_waiting_ms / 1000)
    if "text/csv" in request.headers.get("accept", ""):
        return Response(result.to_csv(), media_type="text/csv")
    return ORJSONResponse(result.to_dict())


EXPORT_RANGE_DOC = "RFC 3339 with a UTC offset; by default the current UTC day; at most 7 days"


@router.get("/drivers/{driver_id}/export", responses=ERRORS)
async def export_driver_data(
    driver_id: DriverId,
    request: Request,
    principal: CurrentPrincipal,
    start: Annotated[str | None, Query(alias="from", description=EXPORT_RANGE_DOC)] = None,
    end: Annotated[str | None, Query(alias="to", description=EXPORT_RANGE_DOC)] = None,
) -> dict[str, Any]:
    """Everything billing holds about a worker over a range, as JSON: the statement with its
    per-day pay, the time segments, the postings on the worker's own accounts, and the pings
    kept (raw, and marks and measured legs of those past retention). The worker itself, or an
    operator; at most 7 days per request (`range_too_long` beyond)."""
    require_self_or_operator(principal, driver_id)
    rt = _rt(request)
    now = datetime.now(UTC)
    a, b = parse_export_range(start, end, now, export.MAX_SPAN)
    return await export.export(rt.statements, driver_id, a, b, now)


@router.get("/trips/{trip_id}/fare", responses=ERRORS)
async def trip_fare(
    trip_id: uuid.UUID, request: Request, principal: CurrentPrincipal
) -> dict[str, Any]:
    """The fare lines of a trip: the same wait minutes and fees for the customer and the
    driver. The order's customer, the trip's driver, or an operator."""
    view = await _rt(request).statements.trip(trip_id)
    allowed = view is not None and (
        principal.role is Role.OPERATOR
        or (principal.role is Role.DRIVER and principal.sub == view.driver_id)
        or (principal.role is Role.CUSTOMER and principal.sub == view.customer_id)
    )
    if view is None or not allowed:
        raise ApiError(404, "not_found", "trip not found (or not ended yet)")
    trip = view.trip
    return {
        "trip_id": str(trip_id),
        "order_id": trip.order.order_id,
        "driver_id": trip.driver_id,
        "outcome": trip.record.outcome.value,
        "pickup_wait_s": trip.pickup_wait_ms / 1000,
        "fare": trip.fare.to_dict(),
    }


@router.get("/reports/waiting", responses=ERRORS)
async def waiting_report(
    request: Request,
    principal: ReportingPrincipal,
    start: Annotated[str | None, Query(alias="from", description=RANGE_DOC)] = None,
    end: Annotated[str | None, Query(alias="to", description=RANGE_DOC)] = None,
    group_by: Annotated[Literal["driver", "cell", "hour"], Query()] = "driver",
) -> dict[str, Any]:
    """P1/P2/P3 and waiting shares, paid and unpaid waiting hours, the share of workers below
    each policy's floor per online hour, and the Gini of unpaid waiting (operators)."""
    require_role(principal, Role.OPERATOR)
    rt = _rt(request)
    now = datetime.now(UTC)
    a, b = parse_range(start, end, now)
    return await rt.reports.waiting(a, b, group_by, now)
