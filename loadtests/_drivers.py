"""Simulated drivers moving plausibly around Amsterdam, producing batches of GPS pings.

Each driver drives at 4–18 m/s (far below the service's 70 m/s jump limit) along straight
segments, turning a little between batches and turning back at the edges of a box around the
city centre. Pings are stamped in
whole milliseconds, strictly increasing per driver and never after the moment the batch is built.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from polder.simulator.city import CENTRE_LAT, CENTRE_LNG, M_PER_DEG_LAT
from polder.simulator.clock import rfc3339_ms

HALF_LAT, HALF_LNG = 0.11, 0.18  # about 25 km x 25 km


@dataclass(slots=True)
class SimDriver:
    driver_id: str
    lat: float
    lng: float
    heading: float  # radians, 0 = north
    speed_mps: float
    last_ms: int  # recorded_at of the last ping built, epoch milliseconds

    def batch(self, size: int, now_ms: int, rng: random.Random) -> bytes | None:
        """A JSON array of ``size`` pings evenly spread over (last ping, now], or None if too
        little time passed.

        The driver turns a little and changes speed between batches and drives a straight
        segment within one, turning back before it would leave the box. The JSON is written
        directly (no dict per ping): this runs on the same two cores as the service it loads.
        """
        span = now_ms - self.last_ms
        if span < size:  # fewer than 1 ms between pings: wait for the clock
            return None
        self.heading = (self.heading + 0.3 * (rng.random() - 0.5)) % math.tau
        self.speed_mps = min(18.0, max(4.0, self.speed_mps + rng.random() - 0.5))
        dlat, dlng = self._step(span / 1000.0)
        if abs(self.lat + dlat - CENTRE_LAT) > HALF_LAT:
            self.heading = (math.pi - self.heading) % math.tau
        if abs(self.lng + dlng - CENTRE_LNG) > HALF_LNG:
            self.heading = (-self.heading) % math.tau
        dlat, dlng = self._step(span / 1000.0)
        tail = (
            f'"accuracy_m":5.0,"speed_mps":{self.speed_mps:.2f},'
            f'"heading_deg":{math.degrees(self.heading):.1f}}}'
        )
        lat, lng, first = self.lat, self.lng, self.last_ms
        parts = [
            f'{{"lat":{lat + dlat * i / size:.7f},"lng":{lng + dlng * i / size:.7f},'
            f'"recorded_at":"{rfc3339_ms(first + span * i // size)}",{tail}'
            for i in range(1, size + 1)
        ]
        self.lat, self.lng, self.last_ms = lat + dlat, lng + dlng, now_ms
        return ("[" + ",".join(parts) + "]").encode()

    def _step(self, dt_s: float) -> tuple[float, float]:
        """(Δlat, Δlng) in degrees after ``dt_s`` at the current speed and heading."""
        d = self.speed_mps * dt_s
        return (
            d * math.cos(self.heading) / M_PER_DEG_LAT,
            d * math.sin(self.heading) / (M_PER_DEG_LAT * math.cos(math.radians(self.lat))),
        )


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
