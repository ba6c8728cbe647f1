"""The simulated city the simulator and every benchmark use: Amsterdam's centre, its busy
places, and moving a point by metres."""

from __future__ import annotations

import math
from dataclasses import dataclass

CENTRE_LAT, CENTRE_LNG = 52.37, 4.89
M_PER_DEG_LAT = 111_320.0
# Busy places (lat, lng, spread in metres): centre, stations, business districts, nightlife.
HOTSPOTS = (
    (52.3731, 4.8922, 600.0),  # Dam
    (52.3791, 4.9003, 400.0),  # Centraal
    (52.3383, 4.8727, 700.0),  # Zuidas
    (52.3644, 4.8835, 500.0),  # Leidseplein
    (52.3601, 4.9261, 800.0),  # Oost
    (52.3894, 4.8376, 900.0),  # Sloterdijk
    (52.3124, 4.9470, 900.0),  # Bijlmer ArenA
    (52.3993, 4.9155, 700.0),  # Noord
)

Point = tuple[float, float]


def offset(lat: float, lng: float, north_m: float, east_m: float) -> Point:
    """The point ``north_m`` north and ``east_m`` east of (lat, lng), flat-earth (city scale)."""
    return (
        lat + north_m / M_PER_DEG_LAT,
        lng + east_m / (M_PER_DEG_LAT * math.cos(math.radians(lat))),
    )


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class City:
    """A city the simulator can run: its tariff name in Polder, a centre, a box workers stay in
    (half-extent in metres) and its busy places (lat, lng, spread in metres)."""

    name: str
    centre: Point
    half_extent_m: float
    hotspots: tuple[tuple[float, float, float], ...]


CITIES = {
    "amsterdam": City("amsterdam", (CENTRE_LAT, CENTRE_LNG), 9_000.0, HOTSPOTS),
}


def get_city(name: str) -> City:
    try:
        return CITIES[name]
    except KeyError:
        raise ValueError(f"unknown city {name!r}; known: {', '.join(sorted(CITIES))}") from None
