"""The simulated workers and customers: asyncio tasks that use Polder as its apps would.

Each agent has its own ``random.Random`` seeded from the run's seed and the agent's number, so
one agent's decisions do not depend on how the others were scheduled.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import websockets

from polder.common.auth import Role
from polder.common.tasks import wait_for_event
from polder.simulator.city import City
from polder.simulator.client import Answer, Polder
from polder.simulator.clock import rfc3339_ms
from polder.simulator.model import (
    Behaviour,
    Mover,
    OrderPlan,
    ShiftPlan,
    cruise_target,
    next_arrival_s,
    plan_order,
)
from polder.simulator.observations import OrderObs, WorkerObs


@dataclass
class Sim:
    """What every agent shares: the API, the plan of the run, and the observations."""

    api: Polder
    city: City
    behaviour: Behaviour
    seed: int
    prefix: str  # makes this run's ids unique: sim-<tag>
    run_s: float
    drain_s: float
    order_rate_per_min: float
    customers: int
    t0: float = field(default_factory=time.monotonic)
    wall0: datetime = field(default_factory=lambda: datetime.now(UTC))
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # no new shifts, no orders
    hard_stop: asyncio.Event = field(default_factory=asyncio.Event)  # abandon running trips
    orders: list[OrderObs] = field(default_factory=list)
    by_order_id: dict[str, OrderObs] = field(default_factory=dict)
    early_offers: dict[str, float] = field(default_factory=dict)  # offer seen before the 201
    workers: dict[str, WorkerObs] = field(default_factory=dict)
    fare_watch: set[asyncio.Task[None]] = field(default_factory=set)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def t(self) -> float:
        return time.monotonic() - self.t0

    async def sleep(self, seconds: float, until: asyncio.Event | None = None) -> bool:
        """Sleep, or return early (True) when ``until`` (default: hard stop) is set."""
        event = until or self.hard_stop
        if seconds <= 0:
            return event.is_set()
        return await wait_for_event(event, seconds)

    def spawn(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def order_placed(self, obs: OrderObs) -> None:
        assert obs.order_id is not None
        self.by_order_id[obs.order_id] = obs
        seen = self.early_offers.pop(obs.order_id, None)
        if seen is not None and obs.first_offer_t is None:
            obs.first_offer_t = seen

    def offer_seen(self, order_id: str, t: float) -> None:
        obs = self.by_order_id.get(order_id)
        if obs is None:
            self.early_offers.setdefault(order_id, t)
        else:
            obs.offers += 1
            if obs.first_offer_t is None:
                obs.first_offer_t = t


# --- workers -------------------------------------------------------------------------------

# A status change reaches the location service a moment after dispatch answers.
OFFLINE_RETRIES = 10
OFFLINE_RETRY_S = 0.3


def _code(r: Answer) -> str | None:
    error = r.body.get("error") if isinstance(r.body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


class WorkerAgent:
    def __init__(self, sim: Sim, index: int, plan: ShiftPlan) -> None:
        self.sim = sim
        self.id = f"{sim.prefix}-w{index:04d}"
        self.plan = plan
        self.rng = random.Random(f"{sim.seed}:worker:{index}")
        self.obs = WorkerObs(self.id)
        sim.workers[self.id] = self.obs
        self.mover = Mover.parked(plan.home, 0.0, plan.speed_mps)
        self.offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: set[str] = set()  # offers withdrawn, expired or taken by another
        self._last_ping_ms = 0
        self._pinging = asyncio.Event()

    async def _call(self, method: str, service: str, path: str, **kw: Any) -> Answer:
        return await self.sim.api.call(service, method, path, Role.DRIVER, self.id, **kw)

    async def set_status(self, status: str) -> bool:
        for _ in range(10):
            sent = self.sim.t()
            r = await self._call(
                "POST", "dispatch", f"/v1/drivers/{self.id}/status", json={"status": status}
            )
            answered = self.sim.t()
            if r.ok:
                (self.obs.online if status == "online" else self.obs.offline).append(
                    (sent, answered)
                )
                return True
            if r.status in (0, 409):  # "the offer changed meanwhile; retry", or a lost reply
                await asyncio.sleep(0.3)
                continue
            break
        self.sim.problems.append(f"{self.id}: going {status} failed")
        return False

    async def run(self) -> None:
        sim = self.sim
        if await sim.sleep(self.plan.start_s - sim.t(), sim.stopping):
            return
        if not await self.set_status("online"):
            return
        self.mover = Mover.parked(self.plan.home, sim.t(), self.plan.speed_mps)
        await self.send_pings([self.ping_now()])
        pinger = asyncio.create_task(self.ping_loop())
        try:
            try:
                async with sim.api.feed(self.id) as ws:
                    reader = asyncio.create_task(self.read_feed(ws))
                    try:
                        await self.work()
                    finally:
                        reader.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await reader
            except (OSError, websockets.WebSocketException) as exc:
                sim.problems.append(f"{self.id}: offer feed failed: {exc!r}")
        finally:
            # The last pings first (no position is taken from a worker who is offline), then
            # offline (a pending offer is declined with it).
            self._pinging.set()
            await pinger
            await self.set_status("offline")

    async def read_feed(self, ws: websockets.ClientConnection) -> None:
        async for raw in ws:
            msg = orjson.loads(raw)
            if msg.get("type") == "offer":
                offer = msg["offer"]
                self.obs.offers += 1
                self.sim.offer_seen(offer["order_id"], self.sim.t())
                await self.offers.put(offer)
            elif msg.get("type") == "offer_closed":
                self.closed.add(msg["offer_id"])

    def ping_now(self) -> dict[str, Any]:
        now_ms = max(int(time.time() * 1000), self._last_ping_ms + 1)
        self._last_ping_ms = now_ms
        lat, lng = self.mover.position(self.sim.t())
        moving = self.mover.moving(self.sim.t())
        return {
            "lat": round(lat, 7),
            "lng": round(lng, 7),
            "recorded_at": rfc3339_ms(now_ms),
            "accuracy_m": 5.0,
            "speed_mps": round(self.mover.speed_mps if moving else 0.0, 2),
        }

    async def send_pings(self, pings: list[dict[str, Any]]) -> None:
        """Send a batch. Right after going online the location service may not have heard it
        yet (the status change travels dispatch → topic → location): a ``driver_offline``
        refusal is retried after a moment, a few times, and counted."""
        for attempt in range(OFFLINE_RETRIES + 1):
            r = await self._call(
                "POST", "location", f"/v1/drivers/{self.id}/locations", json={"pings": pings}
            )
            if r.ok:
                self.obs.pings_sent += len(pings)
                return
            if r.status == 409 and _code(r) == "driver_offline" and attempt < OFFLINE_RETRIES:
                self.obs.ping_offline_retries += 1
                await asyncio.sleep(OFFLINE_RETRY_S)
                continue
            break
        self.obs.ping_errors += 1
        if r.status not in (0, 429, 503):
            self.sim.problems.append(f"{self.id}: pings refused {r.status}: {r.reason()}")

    async def ping_loop(self) -> None:
        b = self.sim.behaviour
        batch: list[dict[str, Any]] = []
        while not self._pinging.is_set():
            await self.sim.sleep(b.ping_interval_s, self._pinging)
            batch.append(self.ping_now())
            if len(batch) >= b.ping_batch or self._pinging.is_set():
                pings, batch = batch, []
                await self.send_pings(pings)

    async def work(self) -> None:
        sim, b = self.sim, self.sim.behaviour
        while not sim.stopping.is_set() and sim.t() < self.plan.end_s:
            try:
                offer = await asyncio.wait_for(
                    self.offers.get(), timeout=max(0.1, min(10.0, self.plan.end_s - sim.t()))
                )
            except TimeoutError:
                self.idle_move()
                continue
            if offer["offer_id"] in self.closed:
                continue
            await sim.sleep(self.rng.uniform(*b.think_s), sim.stopping)
            if sim.stopping.is_set():
                return  # going offline declines it
            if self.rng.random() >= b.accept_probability:
                r = await self._call("POST", "dispatch", f"/v1/offers/{offer['offer_id']}/decline")
                self.obs.declined += 1
                continue
            r = await self._call("POST", "dispatch", f"/v1/offers/{offer['offer_id']}/accept")
            if not r.ok:
                self.obs.lost += 1  # expired, withdrawn or cancelled meanwhile
                continue
            self.obs.accepted += 1
            await self.trip(offer, r.body["trip_id"])

    def idle_move(self) -> None:
        t = self.sim.t()
        if self.mover.moving(t):
            return
        target = cruise_target(self.sim.city, self.sim.behaviour, self.plan.area, self.rng)
        if target is not None:
            self.mover.go_to(target, t)

    async def drive_to(self, lat: float, lng: float) -> bool:
        """Drive there; False if the run is being torn down meanwhile."""
        arrival = self.mover.go_to((lat, lng), self.sim.t())
        return not await self.sim.sleep(arrival - self.sim.t())

    async def step(self, trip_id: str, step: str, reason: str | None = None) -> Answer:
        body: dict[str, Any] = {"type": step}
        if reason:
            body["reason"] = reason
        return await self._call("POST", "dispatch", f"/v1/trips/{trip_id}/events", json=body)

    async def trip(self, offer: dict[str, Any], trip_id: str) -> None:
        sim, b, rng = self.sim, self.sim.behaviour, self.rng
        order = sim.by_order_id.get(offer["order_id"])
        if order is not None:
            order.accepted_t = sim.t()
            order.driver_id = self.id
            order.trip_id = trip_id
            order.quoted_eta_s = float(offer["pickup_eta_s"])
        pickup, dropoff = offer["pickup"], offer["dropoff"]

        async def abandon() -> None:
            await self.step(trip_id, "cancelled", "shift over (simulation ended)")
            self.mover.stop(sim.t())
            if order is not None:
                order.cancelled_by_driver = True

        if not await self.drive_to(pickup["lat"], pickup["lng"]):
            return await abandon()
        r = await self.step(trip_id, "arrived_pickup")
        if not r.ok:
            return self._ended(r)
        if order is not None:
            order.arrived_pickup_t = sim.t()
        wait = 0.0
        if offer["kind"] == "delivery" and order is not None and order.ready_in_t is not None:
            wait = max(0.0, order.ready_in_t - sim.t())
            if rng.random() < b.unready_probability:  # the kitchen is late
                wait += b.scaled(b.late_rider_s, rng)
        elif offer["kind"] == "ride" and rng.random() < b.late_rider_probability:
            wait = b.scaled(b.late_rider_s, rng)
            if rng.random() < b.no_show_probability / b.late_rider_probability:
                if await sim.sleep(wait):
                    return await abandon()
                r = await self.step(trip_id, "cancelled", "rider did not show up")
                if r.ok and order is not None:
                    order.cancelled_by_driver = True
                return None
        if await sim.sleep(wait):
            return await abandon()
        r = await self.step(trip_id, "picked_up")
        if not r.ok:
            return self._ended(r)
        # With a rider aboard the trip is finished even when the run is torn down: the rider
        # gets out where the car is (a trip can be cancelled only before the pickup).
        torn_down = not await self.drive_to(dropoff["lat"], dropoff["lng"])
        if torn_down:
            self.mover.stop(sim.t())
        r = await self.step(trip_id, "arrived_dropoff")
        if not r.ok:
            return self._ended(r)
        if not torn_down:
            await sim.sleep(b.scaled(b.dropoff_s, rng))
        r = await self.step(trip_id, "completed")
        if not r.ok:
            return self._ended(r)
        self.obs.trips_completed += 1
        if order is not None:
            order.completed_t = sim.t()
            watch = asyncio.ensure_future(watch_fare(sim, order))
            sim.fare_watch.add(watch)
        return None

    def _ended(self, r: Answer) -> None:
        """A refused step: the customer cancelled meanwhile (409), or something is wrong."""
        self.mover.stop(self.sim.t())
        if r.status != 409:
            self.obs.step_errors += 1
            self.sim.problems.append(f"{self.id}: trip step refused {r.status}: {r.reason()}")


async def watch_fare(sim: Sim, order: OrderObs, deadline_s: float = 120.0) -> None:
    """Ask billing for the trip's fare until it answers: when it does is billing's lag."""
    assert order.trip_id is not None and order.driver_id is not None
    end = sim.t() + deadline_s
    delay = 0.2
    while sim.t() < end:
        r = await sim.api.call(
            "billing",
            "GET",
            f"/v1/trips/{order.trip_id}/fare",
            Role.DRIVER,
            order.driver_id,
            retry=True,
        )
        if r.ok:
            order.fare_seen_t = sim.t()
            order.fare = r.body
            return
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 1.5)


# --- customers -----------------------------------------------------------------------------


async def customers(sim: Sim) -> None:
    """Place orders at the time-varying rate until the run ends (or it is stopped)."""
    rng = random.Random(f"{sim.seed}:orders")
    period = max(60.0, min(sim.run_s, 1800.0))
    n = 0
    while True:
        gap = next_arrival_s(sim.order_rate_per_min, sim.t(), period, rng)
        if sim.t() + gap >= sim.run_s or await sim.sleep(gap, sim.stopping):
            return
        plan = plan_order(sim.city, sim.behaviour, rng)
        customer = f"{sim.prefix}-c{rng.randrange(sim.customers):04d}"
        sim.spawn(customer_order(sim, customer, f"{sim.prefix}-o{n:06d}", plan))
        n += 1


async def customer_order(sim: Sim, customer: str, key: str, plan: OrderPlan) -> None:
    body: dict[str, Any] = {
        "kind": plan.kind,
        "pickup": {"lat": round(plan.pickup[0], 7), "lng": round(plan.pickup[1], 7)},
        "dropoff": {"lat": round(plan.dropoff[0], 7), "lng": round(plan.dropoff[1], 7)},
    }
    obs = OrderObs(key=key, customer_id=customer, kind=plan.kind, placed_sent_t=sim.t())
    if plan.prep_s is not None:
        ready = datetime.now(UTC) + timedelta(seconds=plan.prep_s)
        body["ready_at"] = ready.isoformat(timespec="milliseconds")
        obs.ready_in_t = obs.placed_sent_t + plan.prep_s
    sim.orders.append(obs)
    r = await sim.api.call(
        "dispatch",
        "POST",
        "/v1/orders",
        Role.CUSTOMER,
        customer,
        json=body,
        headers={"idempotency-key": key},
        retry=True,
    )
    if r.status != 201:
        obs.place_error = f"{r.status}: {r.reason()}"
        sim.problems.append(f"order {key} not placed: {obs.place_error}")
        return
    obs.order_id = r.body["order_id"]
    obs.placed_t = sim.t()
    sim.order_placed(obs)
    if plan.cancel_after_s is not None:
        wait = plan.cancel_after_s - (sim.t() - obs.placed_sent_t)
        if await sim.sleep(wait, sim.stopping):
            return  # the run is over: open orders are closed after the workers are done
        if obs.arrived_pickup_t is None and obs.completed_t is None:
            await cancel(sim, obs)


async def cancel(sim: Sim, obs: OrderObs) -> None:
    assert obs.order_id is not None
    obs.cancel_requested = True
    r = await sim.api.call(
        "dispatch", "POST", f"/v1/orders/{obs.order_id}/cancel", Role.CUSTOMER, obs.customer_id
    )
    if r.ok and r.body.get("status") == "cancelled":
        obs.cancelled_by_customer = True
