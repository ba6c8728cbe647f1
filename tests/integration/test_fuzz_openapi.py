"""Property-based fuzzing of every service's OpenAPI document with Schemathesis, on the real
broker and Postgres: generated requests — valid and invalid — with a valid token for whoever
the route is about never get a 5xx, and every response agrees with the document (status code,
content type, body schema).

The services run on a uvicorn server in a thread of its own, so Schemathesis' synchronous calls
do not block the service's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from schemathesis import GenerationMode

from polder.billing.main import build_app as build_billing
from polder.common.auth import issue_token
from polder.common.bus import create_topics
from polder.common.settings import Settings
from polder.dispatch.main import build_app as build_dispatch
from polder.location.main import build_app as build_location
from polder.runtime.infra import free_port
from tests.conftest import Infra, isolated_settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    # Schemathesis' own strategies use `random`, which Hypothesis deprecates; not our code.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

BUILDERS: dict[str, Callable[[Settings], FastAPI]] = {
    "location": build_location,
    "dispatch": lambda s: build_dispatch(s, matcher="none"),
    "billing": build_billing,
}


@contextlib.contextmanager
def threaded(app: FastAPI) -> Iterator[str]:
    """Serve the app (lifespan included) from a thread with its own event loop."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, lifespan="on", loop="asyncio"
        )
    )
    thread = threading.Thread(target=server.run, name="fuzzed-service", daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.05)
        assert server.started, "the service did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def token_for(case: Any, settings: Settings) -> str:
    """A valid token for whoever the request is about: the driver in the path, a customer
    placing an order, an operator for everything else."""
    driver = (case.path_parameters or {}).get("driver_id")
    if isinstance(driver, str) and driver:
        return issue_token(settings, "driver", driver)
    if case.path == "/v1/orders" and case.method == "POST":
        return issue_token(settings, "customer", "cust-fuzz")
    return issue_token(settings, "operator", "ops-fuzz")


@pytest.mark.parametrize("service", sorted(BUILDERS))
def test_no_5xx_and_every_response_matches_the_document(service: str, infra: Infra) -> None:
    unlimited = {"rate_limit_per_s": 10_000, "rate_limit_burst": 10_000}
    reports = {"report_rate_limit_per_s": 10_000, "report_rate_limit_burst": 10_000}
    settings = isolated_settings(infra, **unlimited, **reports)  # one token sends every case
    asyncio.run(create_topics(settings, embedded=True))
    app = BUILDERS[service](settings)
    with threaded(app) as base:
        schema = schemathesis.openapi.from_dict(app.openapi())
        schema.config.update(base_url=base)
        # Schema-valid data may still break a domain rule the document cannot express (a
        # ready_at on a ride, a pickup outside the city): a 422 with its reason is the right
        # answer there. Everything else still fails: 5xx, undocumented status, wrong body.
        acceptance = schema.config.checks.positive_data_acceptance
        acceptance.expected_statuses = [*acceptance.expected_statuses, "422"]
        operations = [op.ok() for op in schema.get_all_operations()]
        fuzzed = [op for op in operations if op.path.startswith("/v1/")]
        assert fuzzed, "no API operations in the document"
        failures: list[str] = []
        for operation in fuzzed:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    _fuzz(operation, mode, settings)
                except (Exception, BaseExceptionGroup) as exc:  # every operation reports
                    failures.append(f"{operation.label} ({mode.value}):\n{exc}")
        assert not failures, "\n\n".join(failures)


def _fuzz(operation: Any, mode: GenerationMode, settings: Settings) -> None:
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        headers = {"authorization": f"Bearer {token_for(case, settings)}"}
        if mode is GenerationMode.POSITIVE and "idempotency-key" in (case.headers or {}):
            # a fresh key per request: the fuzzer repeats keys with other bodies, which is
            # the reuse Stripe semantics refuse (422), tested on its own in test_dispatch
            headers["idempotency-key"] = uuid.uuid4().hex
        case.call_and_validate(headers=headers)

    run()
