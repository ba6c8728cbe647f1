"""Each service's OpenAPI document is complete: every $ref resolves, every route is described."""

from collections.abc import Iterator
from typing import Any

import pytest

from polder.common.settings import Settings
from polder.runtime.catalog import available_services, service_module


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


@pytest.mark.parametrize("service", available_services())
def test_every_ref_resolves(service: str) -> None:
    doc = service_module(service).build_app(Settings()).openapi()
    for ref in refs(doc):
        assert resolve(doc, ref) is not None, ref


def test_location_ingest_documents_its_body_and_errors() -> None:
    doc = service_module("location").build_app(Settings()).openapi()
    post = doc["paths"]["/v1/drivers/{driver_id}/locations"]["post"]
    body = resolve(doc, post["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    assert body["additionalProperties"] is False
    assert body["properties"]["pings"]["maxItems"] == 500
    assert {"202", "401", "403", "413", "422", "429"} <= set(post["responses"])
    assert {"/healthz", "/readyz", "/metrics", "/v1/drivers/nearby", "/v1/supply"} <= set(
        doc["paths"]
    )


def test_every_state_changing_post_documents_its_idempotency_key() -> None:
    doc = service_module("dispatch").build_app(Settings()).openapi()
    posts = {path: ops["post"] for path, ops in doc["paths"].items() if "post" in ops}
    assert set(posts) == {
        "/v1/orders",
        "/v1/orders/{order_id}/cancel",
        "/v1/drivers/{driver_id}/status",
        "/v1/offers/{offer_id}/accept",
        "/v1/offers/{offer_id}/decline",
        "/v1/trips/{trip_id}/events",
    }
    for path, post in posts.items():
        [header] = [p for p in post["parameters"] if p["name"].lower() == "idempotency-key"]
        assert header["in"] == "header" and header["schema"]["maxLength"] == 255
        assert "422" in header["description"]
        assert header["required"] is (path == "/v1/orders"), path
        assert {"400", "422"} <= set(post["responses"]), path
        assert "x-idempotency-key-required" not in post
