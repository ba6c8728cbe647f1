"""What every service's FastAPI app has: JSON errors, body limits, /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import orjson
import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from polder.common.db import DatabaseUnavailable
from polder.common.errors import ApiError
from polder.common.metrics import (
    ASGIApp,
    CommonMetrics,
    HttpMetricsMiddleware,
    Receive,
    Scope,
    Send,
)
from polder.common.settings import Settings
from polder.common.throttle import Throttle

log = structlog.get_logger(__name__)

ReadyCheck = Callable[[], Awaitable[None]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


class ORJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(err: ApiError) -> ORJSONResponse:
    return ORJSONResponse(err.body(), status_code=err.status, headers=err.headers)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, whether announced by Content-Length or not."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_bytes):
                await self._too_large(scope, receive, send)
                return
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ApiError(413, "body_too_large", f"body exceeds {self.max_bytes} bytes")
            return dict(message)

        await self.app(scope, counted, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = ApiError(413, "body_too_large", f"body exceeds {self.max_bytes} bytes")
        await error_response(err)(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": e.get("msg", ""),
            "type": e.get("type", ""),
        }
        for e in exc.errors()
    ]


# FastAPI's native OpenTelemetry, off: services export Prometheus metrics, and with it on every
# request asked whether a tracer, meter or logger provider was configured (environment reads).
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def service_app(
    *,
    title: str,
    settings: Settings,
    lifespan: Lifespan,
    metrics: CommonMetrics,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The service's ``routers`` come first: a request is matched against the routes in order,
    and the service's own are the busy ones."""
    app = FastAPI(
        title=title,
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
        telemetry=NO_TELEMETRY,
    )
    for router in routers:
        app.include_router(router)
    app.state.settings = settings
    app.state.throttle = Throttle(settings, metrics.rate_limited)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        err = ApiError(
            422,
            "invalid_request",
            "request does not match the schema",
            errors=_validation_message(exc),
        )
        return error_response(err)

    @app.exception_handler(DatabaseUnavailable)  # a new connection could not be made
    @app.exception_handler(asyncpg.PostgresConnectionError)  # one broke under a query
    @app.exception_handler(asyncpg.exceptions.OperatorInterventionError)  # shutting down
    async def _database_down(_: Request, exc: Exception) -> Response:
        # The database (or the network to it) is down or restarting: say so at once, with a
        # hint when to retry, rather than a 500. The pool reconnects by itself when it is back.
        log.warning("dependency unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
        return error_response(
            ApiError(
                503,
                "unavailable",
                "a dependency is unavailable; retry shortly",
                headers={"Retry-After": "1"},
                retry_after_s=1,
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail)))

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"description": "a dependency is down"}})
    async def readyz(request: Request) -> Response:
        """The broker and the database answer."""
        checks: Mapping[str, ReadyCheck] = getattr(request.app.state, "ready_checks", {})
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check(), timeout=2.0)
                results[name] = "ok"
            except Exception as exc:  # any failure means "not ready"; say which and why
                results[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
        ok = all(v == "ok" for v in results.values())
        return ORJSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": results},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus exposition."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    _document_common_errors(app)
    return app


# What check_key() accepts, as a client should read it: 1-255 visible characters.
IDEMPOTENCY_KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"}


def _document_common_errors(app: FastAPI) -> None:
    """Answers any API route can give, whatever its own code says: 400 for a body that is not
    JSON (FastAPI's parser), 413 for a body over the limit, 429 when the token's request
    budget is spent (every /v1/ route is authenticated), 503 while a dependency is down;
    and the Idempotency-Key header's form, and whether the route requires it."""

    def amend(doc: dict[str, Any]) -> None:
        for path, operations in doc.get("paths", {}).items():
            if not path.startswith("/v1/"):
                continue
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if "requestBody" in operation:
                    responses.setdefault("400", {"description": "the body is not valid JSON"})
                    responses.setdefault("413", {"description": "the body is too large"})
                responses.setdefault(
                    "429",
                    {
                        "description": "this token's request budget is spent; retry after "
                        "Retry-After (seconds)"
                    },
                )
                responses.setdefault(
                    "503", {"description": "a dependency is down; retry after Retry-After"}
                )
                # optional to FastAPI so that check_key() can answer a missing key with its own
                # 400; a route marked x-idempotency-key-required needs one
                required = operation.pop("x-idempotency-key-required", False)
                for param in operation.get("parameters", []):
                    if param["in"] == "header" and param["name"].lower() == "idempotency-key":
                        param["required"] = required
                        param["schema"] = IDEMPOTENCY_KEY_SCHEMA
                        responses.setdefault(
                            "400", {"description": "missing or invalid Idempotency-Key"}
                        )
                        responses.setdefault(
                            "422",
                            {"description": "the Idempotency-Key was used for another request"},
                        )

    amend_openapi(app, amend)


def amend_openapi(app: FastAPI, amend: Callable[[dict[str, Any]], None]) -> None:
    """Change the app's OpenAPI document once, when it is first built (amendments chain)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        amend(doc)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


_COMPONENTS = "#/components/schemas/{model}"


def raw_json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its own body (fast path), documented as ``model``.

    Pair it with :func:`document_models` so the referenced schema exists in the document.
    """
    ref = {"$ref": _COMPONENTS.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def document_models(app: FastAPI, *models: type[BaseModel]) -> None:
    """Add ``models`` (and the models they use) to the app's OpenAPI components."""

    def amend(doc: dict[str, Any]) -> None:
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template=_COMPONENTS)
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema

    amend_openapi(app, amend)
