"""The system checked against itself, after the run, through the public APIs.

- Every order the simulator placed is known to dispatch, in the state the simulator drove it to.
- Every trip the simulator completed has a fare in billing, for the same driver and order.
- Every worker's statement covers exactly the time the worker was online: within the interval
  the simulator can know from when its online and offline requests were sent and answered.

Billing follows the topics, so it lags; the checks wait for it (up to a deadline) by asking again,
and never accept a figure outside those bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from polder.billing.domain.policies import PolicyName
from polder.common.auth import Role
from polder.simulator.agents import Sim
from polder.simulator.client import Answer
from polder.simulator.observations import OrderObs, WorkerObs

T = TypeVar("T")
POLICIES = tuple(p.value for p in PolicyName)
# Statements report seconds with millisecond precision.
ROUNDING_S = 0.001


async def bounded(coros: Iterable[Awaitable[T]], limit: int = 32) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(c: Awaitable[T]) -> T:
        async with gate:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


@dataclass
class CheckResult:
    mismatches: list[str] = field(default_factory=list)
    statements: dict[str, dict[str, Any]] = field(default_factory=dict)  # default policy
    by_policy: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    not_comparable: dict[str, str] = field(default_factory=dict)
    # how long a worker's statement check waited for billing to catch up (0: right at once)
    statement_waited_s: list[float] = field(default_factory=list)
    waiting_by_cell: dict[str, Any] | None = None
    waiting_totals: dict[str, Any] | None = None


def expected_status(o: OrderObs) -> set[str]:
    if o.completed_t is not None:
        return {"completed"}
    if o.cancelled_by_customer or o.cancelled_by_driver:
        return {"cancelled"}
    # neither completed nor cancelled by the simulator: the search ran out
    return {"expired"}


async def check_order(sim: Sim, o: OrderObs) -> str | None:
    if o.order_id is None:
        return f"order {o.key}: never placed ({o.place_error})"
    r = await sim.api.call(
        "dispatch", "GET", f"/v1/orders/{o.order_id}", Role.CUSTOMER, o.customer_id, retry=True
    )
    if not r.ok:
        return f"order {o.order_id}: dispatch answers {r.status} ({r.reason()})"
    body = r.body
    o.final_status = body["status"]
    if body.get("assigned_at"):
        created = datetime.fromisoformat(body["created_at"])
        assigned = datetime.fromisoformat(body["assigned_at"])
        o.assigned_latency_s = (assigned - created).total_seconds()
    if body.get("pickup_eta_s") is not None:
        o.dispatch_eta_s = float(body["pickup_eta_s"])
    want = expected_status(o)
    if o.final_status not in want:
        return (
            f"order {o.order_id}: dispatch says {o.final_status}, the simulator expected "
            f"{' or '.join(sorted(want))}"
        )
    if o.completed_t is not None and (
        body.get("driver_id") != o.driver_id or body.get("trip_id") != o.trip_id
    ):
        return (
            f"order {o.order_id}: completed by {o.driver_id} on trip {o.trip_id}, dispatch "
            f"says driver {body.get('driver_id')} trip {body.get('trip_id')}"
        )
    return None


async def check_orders(sim: Sim) -> list[str]:
    found = await bounded(check_order(sim, o) for o in sim.orders)
    return [m for m in found if m is not None]


async def check_fares(sim: Sim) -> list[str]:
    if sim.fare_watch:
        await asyncio.gather(*sim.fare_watch)
    out = []
    for o in sim.orders:
        if o.completed_t is None:
            continue
        if o.fare is None:
            out.append(f"trip {o.trip_id} (order {o.order_id}) completed, billing has no fare")
            continue
        f = o.fare
        if f.get("order_id") != o.order_id or f.get("driver_id") != o.driver_id:
            out.append(
                f"trip {o.trip_id}: fare for order {f.get('order_id')} / driver "
                f"{f.get('driver_id')}, expected {o.order_id} / {o.driver_id}"
            )
        elif f.get("outcome") != "completed":
            out.append(f"trip {o.trip_id}: completed, billing's outcome is {f.get('outcome')}")
        elif int(f["fare"]["total_minor"]) <= 0:
            out.append(f"trip {o.trip_id}: completed with a fare of {f['fare']['total_minor']}")
    return out


def _range(sim: Sim) -> dict[str, str]:
    from datetime import timedelta

    return {
        "from": (sim.wall0 - timedelta(minutes=1)).isoformat(),
        "to": (sim.wall0 + timedelta(days=1)).isoformat(),
    }


async def check_statement(sim: Sim, w: WorkerObs, deadline_s: float) -> tuple[str | None, Any]:
    lo, hi = w.online_bounds_s()
    first = sim.t()
    end = first + deadline_s
    body: Any = None
    while True:
        sent = sim.t()
        r = await sim.api.call(
            "billing",
            "GET",
            f"/v1/drivers/{w.driver_id}/statement",
            Role.DRIVER,
            w.driver_id,
            params=_range(sim),
            retry=True,
        )
        if r.ok:
            body = r.body
            online = float(body["time"]["online_s"])
            if lo - ROUNDING_S <= online <= hi + ROUNDING_S:
                w.statement_waited_s = sent - first
                return None, body
        if sim.t() >= end:
            break
        await asyncio.sleep(0.5)
    if body is None:
        return f"worker {w.driver_id}: no statement ({r.status}: {r.reason()})", None
    return (
        f"worker {w.driver_id}: statement says {body['time']['online_s']} s online, the "
        f"simulator saw between {lo:.3f} and {hi:.3f} s (still so after waiting "
        f"{deadline_s:.0f} s for billing)"
    ), body


async def check_statements(sim: Sim, result: CheckResult, deadline_s: float = 60.0) -> None:
    workers = [w for w in sim.workers.values() if w.online]
    found = await bounded(check_statement(sim, w, deadline_s) for w in workers)
    for w, (mismatch, body) in zip(workers, found, strict=True):
        if mismatch:
            result.mismatches.append(mismatch)
        if body is not None:
            result.statements[w.driver_id] = body
        if w.statement_waited_s is not None:
            result.statement_waited_s.append(w.statement_waited_s)


async def compare_policies(sim: Sim, result: CheckResult) -> None:
    """Each worker's statement under every pay policy: a policy billing refuses (another
    currency than the city's: 422) is not comparable, which is not a failure."""
    workers = list(result.statements)

    async def one(driver: str, policy: str) -> tuple[str, str, int, Any]:
        r = await sim.api.call(
            "billing",
            "GET",
            f"/v1/drivers/{driver}/statement",
            Role.DRIVER,
            driver,
            params={**_range(sim), "policy": policy},
            retry=True,
        )
        return driver, policy, r.status, r.body

    found = await bounded(one(d, p) for d in workers for p in POLICIES)
    for driver, policy, status, body in found:
        if status == 200:
            result.by_policy.setdefault(policy, {})[driver] = body
        elif status in (404, 422):
            reason = Answer(status, body).reason()
            result.not_comparable.setdefault(policy, f"{status}: {reason}")
        else:
            result.mismatches.append(f"statement of {driver} under {policy}: {status} {body}")
    for policy in result.by_policy:
        result.not_comparable.pop(policy, None)


async def waiting_report(sim: Sim, result: CheckResult, operator: str) -> None:
    r = await sim.api.call(
        "billing",
        "GET",
        "/v1/reports/waiting",
        Role.OPERATOR,
        operator,
        params={**_range(sim), "group_by": "cell"},
        retry=True,
    )
    if r.ok:
        result.waiting_by_cell = r.body
        result.waiting_totals = r.body.get("totals")
    else:
        result.mismatches.append(f"waiting report: {r.status} {r.reason()}")


async def run_checks(sim: Sim, operator: str) -> CheckResult:
    result = CheckResult()
    result.mismatches += await check_orders(sim)
    result.mismatches += await check_fares(sim)
    await check_statements(sim, result)
    await compare_policies(sim, result)
    await waiting_report(sim, result, operator)
    return result
