"""The simulated city's behaviour, pure: where people are, how fast they move, what they decide.

No I/O and no clock: every function takes the time and a seeded ``random.Random``, so a seed
fixes every decision the simulation makes (the system's answers, and so the run, still vary).

Time runs in real time because the services stamp events with their own clock. To keep a run of
about a minute meaningful, trip distances are multiplied by ``Behaviour.trip_scale`` (1.0 for
city-sized trips; the test and short runs use less): workers still drive at city speeds, and
every distance the services measure is real, only the trips are shorter. The busy places shrink
with them (their spread times the square root of the scale) and workers cruise around their own
busy place, so pickups stay short too.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from polder.simulator.city import City, Point, haversine_m, offset

Kind = Literal["ride", "delivery"]


@dataclass(frozen=True, slots=True)
class Behaviour:
    """The knobs of the simulated population; the defaults are a plausible weekday."""

    accept_probability: float = 0.85
    think_s: tuple[float, float] = (0.5, 3.0)  # time to answer an offer
    speed_mps: tuple[float, float] = (7.0, 12.0)  # 25-43 km/h between lights
    cruise_probability: float = 0.5  # an idle worker drives toward a busy place, else stays put
    ping_interval_s: float = 1.0
    ping_batch: int = 3  # pings per HTTP batch: one request every 3 s per worker
    delivery_share: float = 0.4
    trip_km: tuple[float, float] = (1.0, 6.0)  # dropoff distance before scaling
    trip_scale: float = 1.0
    prep_s: tuple[float, float] = (60.0, 600.0)  # merchant prep time before scaling
    unready_probability: float = 0.2  # the food is later than promised
    late_rider_probability: float = 0.2
    late_rider_s: tuple[float, float] = (30.0, 240.0)  # before scaling
    no_show_probability: float = 0.03  # the driver gives up and cancels the trip
    dropoff_s: tuple[float, float] = (5.0, 60.0)  # handing over, before scaling
    cancel_probability: float = 0.08  # the customer cancels before the pickup
    cancel_after_s: tuple[float, float] = (3.0, 30.0)
    shift_start_spread: float = 0.2  # workers start within this share of the run
    early_leave_probability: float = 0.15  # some end their shift before the run ends

    def scaled(self, bounds: tuple[float, float], rng: random.Random) -> float:
        return rng.uniform(*bounds) * self.trip_scale


def demand_per_min(base_per_min: float, elapsed_s: float, period_s: float) -> float:
    """Orders per minute at ``elapsed_s``: a wave around the base rate (a rush every period)."""
    return base_per_min * (1.0 + 0.5 * math.sin(2 * math.pi * elapsed_s / period_s))


def next_arrival_s(
    base_per_min: float, elapsed_s: float, period_s: float, rng: random.Random
) -> float:
    """Seconds until the next order of a time-varying Poisson process (thinning)."""
    peak = base_per_min * 1.5 / 60.0
    t = elapsed_s
    while True:
        t += rng.expovariate(peak)
        if rng.random() * peak <= demand_per_min(base_per_min, t, period_s) / 60.0:
            return t - elapsed_s


def hotspot_point(
    city: City, rng: random.Random, scale: float = 1.0, index: int | None = None
) -> Point:
    """A point near one of the city's busy places (``index``, or one at random), its spread
    shrunk by ``sqrt(scale)``."""
    if index is None:
        index = rng.randrange(len(city.hotspots))
    lat, lng, spread = city.hotspots[index % len(city.hotspots)]
    spread *= math.sqrt(scale)
    return offset(lat, lng, rng.gauss(0.0, spread), rng.gauss(0.0, spread))


def within_city(city: City, point: Point) -> Point:
    """The point, moved back inside the city's box if it fell outside."""
    half_lat = city.half_extent_m / 111_320.0
    half_lng = half_lat / math.cos(math.radians(city.centre[0]))
    lat = min(city.centre[0] + half_lat, max(city.centre[0] - half_lat, point[0]))
    lng = min(city.centre[1] + half_lng, max(city.centre[1] - half_lng, point[1]))
    return lat, lng


def dropoff_for(city: City, pickup: Point, behaviour: Behaviour, rng: random.Random) -> Point:
    distance = behaviour.scaled(behaviour.trip_km, rng) * 1000.0
    bearing = rng.uniform(0.0, math.tau)
    return within_city(
        city,
        offset(pickup[0], pickup[1], distance * math.cos(bearing), distance * math.sin(bearing)),
    )


@dataclass(frozen=True, slots=True)
class OrderPlan:
    """An order the simulated customer will place, and what will happen around it."""

    kind: Kind
    pickup: Point
    dropoff: Point
    prep_s: float | None  # deliveries: ready_at = placed + prep_s
    cancel_after_s: float | None  # the customer cancels then if no driver has picked up


def plan_order(city: City, behaviour: Behaviour, rng: random.Random) -> OrderPlan:
    kind: Kind = "delivery" if rng.random() < behaviour.delivery_share else "ride"
    pickup = within_city(city, hotspot_point(city, rng, behaviour.trip_scale))
    dropoff = dropoff_for(city, pickup, behaviour, rng)
    prep = behaviour.scaled(behaviour.prep_s, rng) if kind == "delivery" else None
    cancel = (
        rng.uniform(*behaviour.cancel_after_s)
        if rng.random() < behaviour.cancel_probability
        else None
    )
    return OrderPlan(kind, pickup, dropoff, prep, cancel)


@dataclass(frozen=True, slots=True)
class ShiftPlan:
    start_s: float  # after the run starts
    end_s: float  # the worker stops taking offers then (and finishes its trip)
    area: int  # the busy place the worker starts at and cruises around
    home: Point
    speed_mps: float


def plan_shift(
    city: City, behaviour: Behaviour, run_s: float, index: int, rng: random.Random
) -> ShiftPlan:
    """Worker ``index``'s shift; workers are spread over the busy places in turn."""
    start = rng.uniform(0.0, behaviour.shift_start_spread * run_s)
    end = run_s
    if rng.random() < behaviour.early_leave_probability:
        end = rng.uniform(start + (run_s - start) * 0.5, run_s)
    area = index % len(city.hotspots)
    home = within_city(city, hotspot_point(city, rng, behaviour.trip_scale, area))
    return ShiftPlan(start, end, area, home, rng.uniform(*behaviour.speed_mps))


def cruise_target(city: City, behaviour: Behaviour, area: int, rng: random.Random) -> Point | None:
    """Where an idle worker drives next, or None to stay put: mostly around its own busy
    place; in full-scale runs now and then to another one."""
    if rng.random() >= behaviour.cruise_probability:
        return None
    if behaviour.trip_scale >= 0.5 and rng.random() < 0.1:
        area = rng.randrange(len(city.hotspots))
    return within_city(city, hotspot_point(city, rng, behaviour.trip_scale, area))


@dataclass(slots=True)
class Mover:
    """A worker moving along straight segments at a constant speed, or standing still.

    ``position(t)`` is where it is at time ``t`` (seconds on any monotonic clock); ``go_to``
    starts a new leg from wherever it is and returns when it will arrive.
    """

    origin: Point
    target: Point
    depart_t: float
    speed_mps: float

    @classmethod
    def parked(cls, at: Point, t: float, speed_mps: float) -> Mover:
        return cls(at, at, t, speed_mps)

    def leg_s(self) -> float:
        return haversine_m(*self.origin, *self.target) / self.speed_mps

    def arrival_t(self) -> float:
        return self.depart_t + self.leg_s()

    def position(self, t: float) -> Point:
        total = self.leg_s()
        if total <= 0.0 or t >= self.depart_t + total:
            return self.target
        f = max(0.0, (t - self.depart_t) / total)
        return (
            self.origin[0] + (self.target[0] - self.origin[0]) * f,
            self.origin[1] + (self.target[1] - self.origin[1]) * f,
        )

    def moving(self, t: float) -> bool:
        return t < self.arrival_t()

    def go_to(self, target: Point, t: float) -> float:
        self.origin = self.position(t)
        self.target = target
        self.depart_t = t
        return self.arrival_t()

    def stop(self, t: float) -> None:
        here = self.position(t)
        self.origin = self.target = here
        self.depart_t = t
