"""In-memory index of the latest position of each driver, keyed by H3 cell (integer API).

Shared by the location service (all fresh drivers) and dispatch (available workers).

Positions carry two clocks: ``recorded_at`` (device, orders a driver's pings so an older ping
never overwrites a newer one) and ``seen_at`` (server, decides freshness: a driver with no ping
for ``ttl_s`` leaves the index). All times are epoch seconds; ``now`` is always passed in.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import h3.api.basic_int as h3
from h3 import H3BaseException

# Centre-to-centre spacing of neighbouring cells is about sqrt(3) x the average edge; cells
# vary in size over the globe, so ring distances are bounded with half of it to stay exact.
_SPACING_SAFETY = 0.5
# The ring search stops as soon as it has ``limit`` drivers closer than the next ring can hold,
# so in a busy city it reads a handful of rings whatever the radius. Only sparse areas walk
# out to the radius; past this many rings the coarser level is cheaper.
_MAX_RINGS = 30


@dataclass(slots=True)
class Position:
    driver_id: str
    lat: float
    lng: float
    cell: int
    recorded_at: float
    seen_at: float


@dataclass(frozen=True, slots=True)
class Nearby:
    position: Position
    distance_m: float


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))


def _ring(origin: int, k: int) -> list[int]:
    if k == 0:
        return [origin]
    try:
        return list(h3.grid_ring(origin, k))
    except H3BaseException:  # pentagon distortion: take the disk minus the inner disk
        inner = set(h3.grid_disk(origin, k - 1))
        return [c for c in h3.grid_disk(origin, k) if c not in inner]


class _Level:
    """Drivers grouped by cell at one resolution."""

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        edge_m = float(h3.average_hexagon_edge_length(resolution, unit="m"))
        self.min_spacing_m = math.sqrt(3) * edge_m * _SPACING_SAFETY
        self.cells: dict[int, set[str]] = {}

    def add(self, cell: int, driver_id: str) -> None:
        self.cells.setdefault(cell, set()).add(driver_id)

    def discard(self, cell: int, driver_id: str) -> None:
        members = self.cells.get(cell)
        if members is not None:
            members.discard(driver_id)
            if not members:
                del self.cells[cell]

    def rings_for(self, radius_m: float) -> int:
        return math.ceil(radius_m / self.min_spacing_m) + 1

    def lower_bound_m(self, ring: int) -> float:
        """No point in a cell ``ring`` steps from the origin cell is closer than this."""
        return max(0, ring - 1) * self.min_spacing_m


class LocationIndex:
    def __init__(self, resolution: int = 9, ttl_s: float = 60.0) -> None:
        self.resolution = resolution
        self.ttl_s = ttl_s
        coarse = max(0, resolution - 2)
        self._fine = _Level(resolution)
        self._coarse = _Level(coarse)
        # Insertion order = order of last sighting, so expiry pops from the front.
        self._drivers: OrderedDict[str, Position] = OrderedDict()

    def __len__(self) -> int:
        return len(self._drivers)

    def __iter__(self) -> Iterator[Position]:
        return iter(self._drivers.values())

    def get(self, driver_id: str) -> Position | None:
        return self._drivers.get(driver_id)

    def upsert(
        self, driver_id: str, lat: float, lng: float, recorded_at: float, seen_at: float
    ) -> bool:
        """Record a position unless the driver already has a newer one. True if it was applied."""
        old = self._drivers.get(driver_id)
        if old is not None and recorded_at <= old.recorded_at:
            return False
        cell = h3.latlng_to_cell(lat, lng, self.resolution)
        if old is not None:
            self._unlink(old)
            del self._drivers[driver_id]
        pos = Position(
            driver_id, lat, lng, cell, recorded_at, max(seen_at, old.seen_at if old else seen_at)
        )
        self._drivers[driver_id] = pos
        self._fine.add(cell, driver_id)
        self._coarse.add(h3.cell_to_parent(cell, self._coarse.resolution), driver_id)
        return True

    def remove(self, driver_id: str) -> bool:
        pos = self._drivers.pop(driver_id, None)
        if pos is None:
            return False
        self._unlink(pos)
        return True

    def _unlink(self, pos: Position) -> None:
        self._fine.discard(pos.cell, pos.driver_id)
        self._coarse.discard(h3.cell_to_parent(pos.cell, self._coarse.resolution), pos.driver_id)

    def expire(self, now: float) -> int:
        """Drop drivers not seen for the TTL. Returns how many left."""
        cutoff = now - self.ttl_s
        gone = 0
        while self._drivers:
            pos = next(iter(self._drivers.values()))
            if pos.seen_at > cutoff:
                break
            self.remove(pos.driver_id)
            gone += 1
        return gone

    def is_fresh(self, pos: Position, now: float) -> bool:
        return now - pos.seen_at < self.ttl_s

    def nearby(
        self, lat: float, lng: float, radius_m: float, limit: int, now: float
    ) -> list[Nearby]:
        """Fresh drivers within ``radius_m`` of a point, nearest first, at most ``limit``.

        Rings of cells are searched outwards; the search stops as soon as the ``limit``-th
        nearest driver found is closer than anything the next ring could hold.
        """
        if limit <= 0 or radius_m <= 0:
            return []
        level = self._fine
        if level.rings_for(radius_m) > _MAX_RINGS:
            level = self._coarse
        max_ring = level.rings_for(radius_m)
        origin = h3.latlng_to_cell(lat, lng, level.resolution)
        best: list[tuple[float, str]] = []  # max-heap of the `limit` nearest, as (-distance, id)
        for ring in range(max_ring + 1):
            if len(best) >= limit and -best[0][0] <= level.lower_bound_m(ring):
                break
            cells = _ring(origin, ring)
            for cell in cells:
                for driver_id in level.cells.get(cell, ()):
                    pos = self._drivers[driver_id]
                    if now - pos.seen_at >= self.ttl_s:
                        continue
                    d = haversine_m(lat, lng, pos.lat, pos.lng)
                    if d > radius_m:
                        continue
                    if len(best) < limit:
                        heapq.heappush(best, (-d, driver_id))
                    elif d < -best[0][0]:
                        heapq.heapreplace(best, (-d, driver_id))
        found = sorted((-neg_d, driver_id) for neg_d, driver_id in best)
        return [Nearby(self._drivers[driver_id], d) for d, driver_id in found]

    def supply(self, resolution: int, now: float) -> dict[int, int]:
        """Fresh drivers per cell at a resolution no finer than the index's."""
        if not 0 <= resolution <= self.resolution:
            raise ValueError(f"resolution must be between 0 and {self.resolution}")
        counts: dict[int, int] = {}
        for pos in self._drivers.values():
            if now - pos.seen_at >= self.ttl_s:
                continue
            cell = (
                pos.cell
                if resolution == self.resolution
                else h3.cell_to_parent(pos.cell, resolution)
            )
            counts[cell] = counts.get(cell, 0) + 1
        return counts
