"""The dispatch router lists its busiest routes first, and that order cannot change which route
answers a request: no two of its paths match one request path."""

from __future__ import annotations

import re

from starlette.routing import BaseRoute

from polder.dispatch.api import BUSIEST_FIRST, router


def _path(route: BaseRoute) -> str:
    path = getattr(route, "path", None)
    assert isinstance(path, str)
    return path


def test_the_busiest_routes_come_first_in_the_order_given() -> None:
    paths = [_path(r) for r in router.routes]
    assert paths[: len(BUSIEST_FIRST)] == list(BUSIEST_FIRST)
    assert len(set(paths)) == len(paths)  # one route per path: no method-split pairs to order


def test_no_two_routes_match_one_request_path() -> None:
    samples = {
        "driver_id": "drv-1",
        "offer_id": "0" * 32,
        "trip_id": "0" * 32,
        "order_id": "0" * 32,
    }
    for route in router.routes:
        path = re.sub(r"\{(\w+)\}", lambda m: samples[m.group(1)], _path(route))
        matching = [_path(r) for r in router.routes if r.path_regex.match(path)]  # type: ignore[attr-defined]
        assert matching == [_path(route)], (path, matching)
