"""Per-token budgets on dispatch and billing: one token's flood gets 429 with Retry-After while
another token's requests keep succeeding, and each service counts what it refused."""

from __future__ import annotations

import httpx
import pytest

from polder.common.settings import Settings
from tests.integration.test_billing import billing_service
from tests.integration.test_dispatch import running

pytestmark = pytest.mark.integration

# A token refills every 20 s: far slower than these tests run, so no refill muddles a count.
LIMITED = {"rate_limit_per_s": 0.05, "rate_limit_burst": 4}


def assert_refused(r: httpx.Response, budget: str) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert r.json()["error"]["budget"] == budget
    assert 1 <= int(r.headers["retry-after"]) <= 20  # whole seconds until the next token


async def refused_count(client: httpx.AsyncClient, base: str, budget: str) -> float:
    text = (await client.get(f"{base}/metrics")).text
    line = f'polder_rate_limited_total{{budget="{budget}"}} '
    [value] = [row.removeprefix(line) for row in text.splitlines() if row.startswith(line)]
    return float(value)


async def test_a_flooding_token_is_refused_by_dispatch_while_others_go_on(
    settings: Settings,
) -> None:
    async with running(settings.model_copy(update=LIMITED)) as d:
        path = "/v1/drivers/flood/offers"
        codes = [(await d.call("GET", path, "driver", "flood")).status_code for _ in range(6)]
        assert codes == [200, 200, 200, 200, 429, 429]
        # a state-changing POST spends the same budget
        r = await d.call(
            "POST", "/v1/drivers/flood/status", "driver", "flood", json={"status": "online"}
        )
        assert_refused(r, "api")
        assert await d.worker_status("flood") is None  # the refused request changed nothing
        for _ in range(4):
            r = await d.call("GET", "/v1/drivers/calm/offers", "driver", "calm")
            assert r.status_code == 200, r.text
        # the same subject under another role is another token's budget
        r = await d.call(
            "GET", "/v1/orders/00000000-0000-0000-0000-000000000000", "customer", "flood"
        )
        assert r.status_code == 404, r.text
        assert await refused_count(d.client, d.base, "api") == 3


async def test_a_flooding_token_is_refused_by_billing_and_reports_have_their_own_budget(
    settings: Settings,
) -> None:
    limited = settings.model_copy(
        update={**LIMITED, "report_rate_limit_per_s": 0.05, "report_rate_limit_burst": 2}
    )
    async with billing_service(limited) as b:
        path = "/v1/drivers/flood/statement"
        codes = [(await b.get(path, "driver", "flood")).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 200, 429]
        assert_refused(await b.get(path, "driver", "flood"), "api")
        assert (await b.get("/v1/drivers/calm/statement", "driver", "calm")).status_code == 200

        for _ in range(4):  # the operator's statements spend its api budget ...
            assert (await b.get(path, "operator", "ops")).status_code == 200
        assert_refused(await b.get(path, "operator", "ops"), "api")
        report = "/v1/reports/waiting"
        # ... and leave its reporting budget whole, which is spent apart
        assert (await b.get(report, "operator", "ops")).status_code == 200
        assert (await b.get(report, "operator", "ops")).status_code == 200
        assert_refused(await b.get(report, "operator", "ops"), "reports")
        assert (await b.get(report, "operator", "ops-2")).status_code == 200
        assert await refused_count(b.client, b.base, "api") == 3
        assert await refused_count(b.client, b.base, "reports") == 1
