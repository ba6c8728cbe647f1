"""Pickup legs: how far, and how long, from a worker to a pickup.

Matching only sees the ``EtaProvider`` protocol, so a road router (OSRM, Valhalla) can replace
the straight-line estimate without touching the matcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from polder.common.geoindex import haversine_m


class Leg(NamedTuple):
    """A named tuple, not a frozen dataclass: a batch measures thousands (as ``Candidate``)."""

    distance_m: float
    eta_s: float


class EtaProvider(Protocol):
    def pickup(self, from_lat: float, from_lng: float, to_lat: float, to_lng: float) -> Leg: ...


@dataclass(frozen=True, slots=True)
class GreatCircleEta:
    """Great-circle distance stretched by a road factor, driven at a constant speed.

    A road factor of 1.3 is the usual detour index of a dense street grid; 8.3 m/s (30 km/h) is
    an urban average with junctions and traffic lights.
    """

    road_factor: float = 1.3
    speed_mps: float = 8.3

    def __post_init__(self) -> None:
        if self.road_factor < 1.0:
            raise ValueError("road_factor must be at least 1: roads are never shorter than the arc")
        if self.speed_mps <= 0.0:
            raise ValueError("speed_mps must be positive")

    def pickup(self, from_lat: float, from_lng: float, to_lat: float, to_lng: float) -> Leg:
        return self.along_arc(haversine_m(from_lat, from_lng, to_lat, to_lng))

    def along_arc(self, arc_m: float) -> Leg:
        """The leg over a great-circle distance already measured (the candidate search has
        each worker's, to the metre ``haversine_m`` gives): the same as ``pickup``."""
        distance_m = arc_m * self.road_factor
        return Leg(distance_m, distance_m / self.speed_mps)


GREAT_CIRCLE = GreatCircleEta()
