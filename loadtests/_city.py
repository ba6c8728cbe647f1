"""The simulated city every benchmark uses: Amsterdam's centre, its busy places, and moving a
point by metres."""

from __future__ import annotations

import math

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
