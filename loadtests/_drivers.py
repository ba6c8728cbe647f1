"""Simulated drivers moving plausibly around Amsterdam, producing batches of GPS pings.

Each driver drives at 4–18 m/s (far below the service's 70 m/s jump limit), turning a little
between pings and bouncing off the edges of a box around the city centre. Pings are stamped in
whole milliseconds, strictly increasing per driver and never after the moment the batch is built.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from polder.simulator.city import CENTRE_LAT, CENTRE_LNG, M_PER_DEG_LAT
from polder.simulator.clock import rfc3339_ms

HALF_LAT, HALF_LNG = 0.11, 0.18  # about 25 km x 25 km
Ping = dict[str, Any]


@dataclass(slots=True)
class SimDriver:
    driver_id: str
    lat: float
    lng: float
    heading: float  # radians, 0 = north
    speed_mps: float
    last_ms: int  # recorded_at of the last ping built, epoch milliseconds

    def _advance(self, dt_s: float, rng: random.Random) -> None:
        self.heading = (self.heading + 0.3 * (rng.random() - 0.5)) % math.tau
        self.speed_mps = min(18.0, max(4.0, self.speed_mps + rng.random() - 0.5))
        d = self.speed_mps * dt_s
        self.lat += d * math.cos(self.heading) / M_PER_DEG_LAT
        self.lng += d * math.sin(self.heading) / (M_PER_DEG_LAT * math.cos(math.radians(self.lat)))
        if abs(self.lat - CENTRE_LAT) > HALF_LAT:
            self.lat = CENTRE_LAT + math.copysign(HALF_LAT, self.lat - CENTRE_LAT)
            self.heading = (math.pi - self.heading) % math.tau
        if abs(self.lng - CENTRE_LNG) > HALF_LNG:
            self.lng = CENTRE_LNG + math.copysign(HALF_LNG, self.lng - CENTRE_LNG)
            self.heading = (-self.heading) % math.tau

    def batch(self, size: int, now_ms: int, rng: random.Random) -> list[Ping] | None:
        """``size`` pings evenly spread over (last ping, now]; None if too little time passed."""
        span = now_ms - self.last_ms
        if span < size:  # fewer than 1 ms between pings: wait for the clock
            return None
        pings: list[Ping] = []
        prev = self.last_ms
        for i in range(1, size + 1):
            t = self.last_ms + span * i // size
            self._advance((t - prev) / 1000.0, rng)
            prev = t
            pings.append({
                "lat": round(self.lat, 7),
                "lng": round(self.lng, 7),
                "recorded_at": rfc3339_ms(t),
                "accuracy_m": 5.0,
                "speed_mps": round(self.speed_mps, 2),
                "heading_deg": round(math.degrees(self.heading), 1),
            })
        self.last_ms = now_ms
        return pings


def make_drivers(ids: list[str], now_ms: int, rng: random.Random) -> list[SimDriver]:
    """Drivers scattered over the box, each with a few seconds of history behind it."""
    return [
        SimDriver(
            driver_id=d,
            lat=CENTRE_LAT + rng.uniform(-HALF_LAT, HALF_LAT),
            lng=CENTRE_LNG + rng.uniform(-HALF_LNG, HALF_LNG),
            heading=rng.uniform(0.0, math.tau),
            speed_mps=rng.uniform(6.0, 14.0),
            last_ms=now_ms - 10_000,
        )
        for d in ids
    ]
