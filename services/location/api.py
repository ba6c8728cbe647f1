"""Location HTTP and WebSocket routes: parse, authorize, call a handler."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import h3.api.basic_int as h3
import orjson
from fastapi import (
    APIRouter,
    Header,
    Path,
    Query,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
)
from pydantic import ValidationError

from polder.common.auth import (
    CurrentPrincipal,
    Principal,
    Role,
    bearer_token,
    require_role,
    require_self,
    require_self_or_operator,
    verify_token,
)
from polder.common.errors import ApiError
from polder.common.http import ORJSONResponse, raw_json_body
from polder.common.idempotency import check_key
from polder.common.timerange import parse_range
from polder.location import export
from polder.location.domain.pings import PingLike
from polder.location.handlers import DriverOffline
from polder.location.models import (
    IngestResult,
    NearbyDriver,
    NearbyOut,
    PingBatchIn,
    Rejection,
    SupplyCell,
    SupplyOut,
    parse_batch,
    parse_frame,
)
from polder.location.runtime import LocationRuntime

router = APIRouter(prefix="/v1")

PING_KEY_DOC = (
    "Optional. A retried batch with the same key (and the same body) gets the first answer "
    "and records nothing again; another body with the key is a 422. Kept in the receiving "
    "process's memory for a few minutes: pings are deduplicated downstream anyway."
)

DRIVER_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
EXPORT_RANGE_DOC = "RFC 3339 with a UTC offset; by default the current UTC day; at most 7 days"


def _runtime(request: Request | WebSocket) -> LocationRuntime:
    rt: LocationRuntime = request.app.state.runtime
    return rt


def _parse_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return ApiError(400, "malformed_json", "body is not valid JSON")
    details = [
        {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors[:20]
    ]
    return ApiError(422, "invalid_request", "body does not match the schema", errors=details)


async def _ingest(rt: LocationRuntime, driver_id: str, pings: Sequence[PingLike]) -> IngestResult:
    if len(pings) > rt.settings.max_pings_per_batch:
        raise ApiError(
            422,
            "too_many_pings",
            f"{len(pings)} pings in one batch; at most {rt.settings.max_pings_per_batch}",
        )
    try:
        result = await rt.ingest(driver_id, pings, datetime.now(UTC))
    except DriverOffline as exc:
        raise ApiError(
            409,
            "driver_offline",
            f"driver {driver_id} is not online: go online (dispatch) before sending positions;"
            " a status change takes a moment to reach this service, so retry shortly after",
        ) from exc
    except ApiError:
        raise
    except Exception as exc:  # broker unreachable or timed out: nothing was accepted
        raise ApiError(
            503,
            "unavailable",
            "cannot record pings right now; retry",
            headers={"Retry-After": "1"},
            retry_after_s=1,
        ) from exc
    return IngestResult(
        accepted=len(result.accepted),
        rejected=[Rejection(index=i, reason=r.value) for i, r in result.rejected],
    )


@router.post(
    "/drivers/{driver_id}/locations",
    status_code=202,
    response_model=IngestResult,
    openapi_extra=raw_json_body(PingBatchIn),
    responses={
        400: {},
        401: {},
        403: {},
        409: {
            "description": "`driver_offline`: the driver is not on shift (online, on a trip or"
            " on a break, as dispatch last published it); no ping of the batch is taken"
        },
        413: {},
        422: {},
        429: {},
        503: {},
    },
)
async def post_locations(
    driver_id: Annotated[str, Path(pattern=DRIVER_ID)],
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[str | None, Header(description=PING_KEY_DOC)] = None,
) -> IngestResult | Response:
    """Record a batch of 1–500 GPS pings from the driver itself."""
    rt = _runtime(request)
    require_self(principal, Role.DRIVER, driver_id)
    raw = await request.body()
    if idempotency_key is None:
        return await _record(rt, driver_id, raw)
    digest = hashlib.sha256(request.url.path.encode() + b"\n" + raw).hexdigest()

    async def effect() -> tuple[int, dict[str, Any]]:
        return 202, (await _record(rt, driver_id, raw)).model_dump(mode="json")

    outcome = await rt.answers.once(principal.key, check_key(idempotency_key), digest, effect)
    return ORJSONResponse(outcome.body, status_code=outcome.status)


async def _record(rt: LocationRuntime, driver_id: str, raw: bytes) -> IngestResult:
    try:
        pings = parse_batch(raw)
    except ValidationError as exc:
        raise _parse_error(exc) from exc
    return await _ingest(rt, driver_id, pings)


@router.websocket("/drivers/{driver_id}/locations/ws")
async def locations_ws(websocket: WebSocket, driver_id: str) -> None:
    """One ping object or an array of them per text frame; each frame is acknowledged."""
    rt = _runtime(websocket)
    await websocket.accept()
    try:
        token = websocket.query_params.get("token") or bearer_token(
            websocket.headers.get("authorization")
        )
        principal = verify_token(rt.settings, token)
        require_self(principal, Role.DRIVER, driver_id)
    except ApiError as err:
        await websocket.send_text(orjson.dumps(err.body()).decode())
        await websocket.close(code=4000 + err.status)
        return
    try:
        while True:
            frame = await websocket.receive_text()
            await websocket.send_text(
                orjson.dumps(await _answer_frame(rt, principal, driver_id, frame)).decode()
            )
    except WebSocketDisconnect:
        return


async def _answer_frame(
    rt: LocationRuntime, principal: Principal, driver_id: str, frame: str
) -> dict[str, Any]:
    try:
        if len(frame) > rt.settings.max_body_bytes:
            raise ApiError(
                413, "body_too_large", f"frame exceeds {rt.settings.max_body_bytes} bytes"
            )
        rt.throttle.charge(principal.key)
        try:
            pings = parse_frame(frame)
        except ValidationError as exc:
            raise _parse_error(exc) from exc
        if not pings:
            raise ApiError(422, "invalid_request", "a frame needs at least one ping")
        return (await _ingest(rt, driver_id, pings)).model_dump()
    except ApiError as err:
        return err.body()


@router.get("/drivers/nearby", response_model=NearbyOut, responses={401: {}, 403: {}, 422: {}})
async def nearby(
    request: Request,
    principal: CurrentPrincipal,
    lat: Annotated[float, Query(ge=-90, le=90)],
    lng: Annotated[float, Query(ge=-180, le=180)],
    radius_m: Annotated[float, Query(gt=0)] = 1000.0,
    limit: Annotated[int, Query(ge=1)] = 20,
) -> NearbyOut:
    """Fresh drivers near a point, nearest first (operators). Radius and limit are capped."""
    require_role(principal, Role.OPERATOR)
    rt = _runtime(request)
    now = time.time()
    found = rt.index.nearby(
        lat,
        lng,
        min(radius_m, rt.settings.nearby_max_radius_m),
        min(limit, rt.settings.nearby_max_limit),
        now,
    )
    return NearbyOut(
        drivers=[
            NearbyDriver(
                driver_id=n.position.driver_id,
                lat=n.position.lat,
                lng=n.position.lng,
                distance_m=round(n.distance_m, 1),
                cell=h3.int_to_str(n.position.cell),
                age_s=round(max(0.0, now - n.position.seen_at), 3),
            )
            for n in found
        ]
    )


@router.get("/supply", response_model=SupplyOut, responses={401: {}, 403: {}, 422: {}})
async def supply(
    request: Request, principal: CurrentPrincipal, res: Annotated[int, Query(ge=0, le=15)] = 7
) -> SupplyOut:
    """Fresh drivers per H3 cell at resolution ``res`` (operators)."""
    require_role(principal, Role.OPERATOR)
    rt = _runtime(request)
    if res > rt.index.resolution:
        raise ApiError(422, "invalid_request", f"res must be at most {rt.index.resolution}")
    counts = rt.index.supply(res, time.time())
    cells = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return SupplyOut(cells=[SupplyCell(cell=h3.int_to_str(c), drivers=n) for c, n in cells])


@router.get("/drivers/{driver_id}/export", responses={401: {}, 403: {}, 422: {}, 429: {}})
async def export_driver_data(
    driver_id: Annotated[str, Path(pattern=DRIVER_ID)],
    request: Request,
    principal: CurrentPrincipal,
    start: Annotated[str | None, Query(alias="from", description=EXPORT_RANGE_DOC)] = None,
    end: Annotated[str | None, Query(alias="to", description=EXPORT_RANGE_DOC)] = None,
) -> dict[str, Any]:
    """Everything this service holds about a worker over a range, as JSON: the raw pings
    (device time in the range; kept for the retention period), the hourly res-8 cells of older
    ones, and the last status heard. The worker itself, or an operator; at most 7 days per
    request (`range_too_long` beyond)."""
    require_self_or_operator(principal, driver_id)
    rt = _runtime(request)  # the request was charged to the token's budget with its principal
    a, b = parse_range(start, end, datetime.now(UTC), export.MAX_SPAN)
    return await export.export(rt.pool, driver_id, a, b, rt.settings.index_resolution)
