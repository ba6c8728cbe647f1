"""In-memory index of the latest position of each driver, keyed by H3 cell (integer API).

Shared by the location service (all fresh drivers) and dispatch (available workers).

Positions carry two clocks: ``recorded_at`` (device, orders a driver's pings so an older ping
never overwrites a newer one) and ``seen_at`` (server, decides freshness: a driver with no ping
for ``ttl_s`` leaves the index). All times are epoch seconds; ``now`` is always passed in.

The index never changes a ``Position`` once made (an upsert makes a new one), so callers may keep
the ones it hands out; they must not modify them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter

import h3.api.basic_int as h3
from h3 import H3BaseException

# Centre-to-centre spacing of neighbouring cells is about sqrt(3) x the average edge; cells
# vary in size over the globe, so ring distances are bounded with half of it to stay exact.
_SPACING_SAFETY = 0.5
# The ring search stops as soon as it has ``limit`` drivers closer than the next ring can hold,
# so in a busy city it reads a handful of rings whatever the radius. Only sparse areas walk
# out to the radius; past this many rings a coarser level is cheaper.
_MAX_RINGS = 30
# Levels kept besides the index's own resolution: this many coarser ones (parents of the
# index cell), so a wide radius never walks more than ``_MAX_RINGS`` rings of small cells.
_COARSER_LEVELS = 3

_EARTH_RADIUS_M = 6_371_008.8  # as in haversine_m
_TWO_R = 2 * _EARTH_RADIUS_M
# x * _HALF_RADIAN == math.radians(x) / 2 bit for bit (scaling by 2 is exact).
_HALF_RADIAN = math.radians(1.0) / 2
# The search compares haversine's ``a`` term (cheap) before computing a distance (asin, sqrt).
# That comparison only discards; a driver that passes it is measured exactly as haversine_m
# does. The bound is widened far beyond float rounding (a few 1e-16 relative) so it never
# discards one that haversine_m would keep.
_A_SLACK_REL, _A_SLACK_ABS = 1e-9, 1e-30
# A cell is skipped when the point is farther from its centre than the search's worst distance
# plus the cell's reach plus this: float rounding in those distances is well under a millimetre
# (about 0.2 m next to the antipode, where asin is steep).
_CELL_SLACK_M = 1.0
# H3 index bits: resolution (4 bits at 52), then 15 digits of 3 bits, unused digits all 7.
_RES_SHIFT = 52
_KEEP_ALL_BUT_RES = ~(0xF << _RES_SHIFT)


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


def _a_bound(distance_m: float) -> float:
    """A bound on the cheap ``a`` of every point that haversine_m puts within ``distance_m``."""
    half_angle = distance_m / _TWO_R
    if half_angle >= 1.5:  # near the antipode sin() stops growing: no bound
        return math.inf
    return math.sin(half_angle) ** 2 * (1 + _A_SLACK_REL) + _A_SLACK_ABS


# What the index keeps per driver: (seen_at, latitude in radians, cos(latitude), longitude in
# degrees, the Position). Made anew at each upsert, like the Position.
_Entry = tuple[float, float, float, float, Position]
_position_of = itemgetter(4)


class _Cell:
    """The drivers in one cell at the index's resolution, and how far they reach from its centre.

    ``reach_m`` only grows while the cell is occupied (it is the farthest any member has been),
    so it always bounds the distance from the centre to every member: a query farther than
    ``worst + reach_m`` from the centre can skip the whole cell (triangle inequality).
    """

    __slots__ = ("members", "phi", "cos_phi", "lng", "reach_a", "reach_m")

    def __init__(self, cell: int) -> None:
        lat, lng = h3.cell_to_latlng(cell)
        self.members: dict[str, _Entry] = {}
        self.phi = math.radians(lat)
        self.cos_phi = math.cos(self.phi)
        self.lng = lng
        self.reach_a = 0.0  # haversine's `a` term of reach_m
        self.reach_m = 0.0

    def reach(self, phi: float, cos_phi: float, lng: float) -> None:
        """Widen the reach to cover a member at this point."""
        s = math.sin((phi - self.phi) * 0.5)
        t = math.sin((lng - self.lng) * _HALF_RADIAN)
        a = s * s + self.cos_phi * cos_phi * t * t
        if a > self.reach_a:
            self.reach_a = a
            self.reach_m = _TWO_R * math.asin(min(1.0, math.sqrt(a)))


class _Level:
    """The occupied cells of the index, grouped by their ancestor at one resolution."""

    __slots__ = ("resolution", "min_spacing_m", "cells", "_parent_bits")

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        edge_m = float(h3.average_hexagon_edge_length(resolution, unit="m"))
        self.min_spacing_m = math.sqrt(3) * edge_m * _SPACING_SAFETY
        self.cells: dict[int, dict[int, _Cell]] = {}
        # A cell's ancestor at this resolution: the resolution field set, the finer digits 7.
        self._parent_bits = (resolution << _RES_SHIFT) | ((1 << 3 * (15 - resolution)) - 1)

    def key(self, cell: int) -> int:
        """``h3.cell_to_parent(cell, self.resolution)`` for a valid cell at least as fine."""
        return (cell & _KEEP_ALL_BUT_RES) | self._parent_bits

    def rings_for(self, radius_m: float) -> int:
        return math.ceil(radius_m / self.min_spacing_m) + 1

    def lower_bound_m(self, ring: int) -> float:
        """No point in a cell ``ring`` steps from the origin cell is closer than this."""
        return max(0, ring - 1) * self.min_spacing_m


class LocationIndex:
    def __init__(self, resolution: int = 9, ttl_s: float = 60.0) -> None:
        self.resolution = resolution
        self.ttl_s = ttl_s
        self._cells: dict[int, _Cell] = {}  # occupied cells at the index's resolution
        # Finest first: the index's resolution, then its coarser ancestors.
        self._levels = [
            _Level(r) for r in range(resolution, max(-1, resolution - 1 - _COARSER_LEVELS), -1)
        ]
        # Insertion order = order of last sighting, so expiry pops from the front.
        self._drivers: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._drivers)

    def __iter__(self) -> Iterator[Position]:
        return map(_position_of, self._drivers.values())

    def get(self, driver_id: str) -> Position | None:
        entry = self._drivers.get(driver_id)
        return None if entry is None else entry[4]

    def upsert(
        self, driver_id: str, lat: float, lng: float, recorded_at: float, seen_at: float
    ) -> bool:
        """Record a position unless the driver already has a newer one. True if it was applied."""
        drivers = self._drivers
        old_entry = drivers.get(driver_id)
        old = None if old_entry is None else old_entry[4]
        if old is not None and recorded_at <= old.recorded_at:
            return False
        cell = h3.latlng_to_cell(lat, lng, self.resolution)
        pos = Position(
            driver_id, lat, lng, cell, recorded_at, max(seen_at, old.seen_at if old else seen_at)
        )
        phi = math.radians(lat)
        cos_phi = math.cos(phi)
        entry = (pos.seen_at, phi, cos_phi, lng, pos)
        drivers[driver_id] = entry
        if old is not None:
            drivers.move_to_end(driver_id)
            if old.cell != cell:
                self._leave(old.cell, driver_id)
        box = self._cells.get(cell)
        if box is None:
            box = self._open(cell)
        box.members[driver_id] = entry
        box.reach(phi, cos_phi, lng)
        return True

    def _open(self, cell: int) -> _Cell:
        box = self._cells[cell] = _Cell(cell)
        for level in self._levels:
            level.cells.setdefault(level.key(cell), {})[cell] = box
        return box

    def _leave(self, cell: int, driver_id: str) -> None:
        members = self._cells[cell].members
        del members[driver_id]
        if members:
            return
        del self._cells[cell]
        for level in self._levels:
            key = level.key(cell)
            children = level.cells[key]
            del children[cell]
            if not children:
                del level.cells[key]

    def remove(self, driver_id: str) -> bool:
        entry = self._drivers.pop(driver_id, None)
        if entry is None:
            return False
        self._leave(entry[4].cell, driver_id)
        return True

    def expire(self, now: float) -> int:
        """Drop drivers not seen for the TTL. Returns how many left."""
        cutoff = now - self.ttl_s
        drivers = self._drivers
        gone = 0
        while drivers:
            driver_id, entry = next(iter(drivers.items()))
            if entry[0] > cutoff:
                break
            del drivers[driver_id]
            self._leave(entry[4].cell, driver_id)
            gone += 1
        return gone

    def is_fresh(self, pos: Position, now: float) -> bool:
        return now - pos.seen_at < self.ttl_s

    def nearby(
        self, lat: float, lng: float, radius_m: float, limit: int, now: float
    ) -> list[Nearby]:
        """Fresh drivers within ``radius_m`` of a point, nearest first, at most ``limit``.

        Exactly what sorting every fresh driver by (haversine_m from the point, driver_id)
        and keeping those within the radius would give. Rings of cells are searched outwards;
        the search stops as soon as the ``limit``-th nearest driver found is closer than
        anything the next ring could hold, and skips a cell whose drivers are all farther.
        """
        if limit <= 0 or radius_m <= 0:
            return []
        level = self._levels[-1]
        for candidate in self._levels:
            if candidate.rings_for(radius_m) <= _MAX_RINGS:
                level = candidate
                break
        max_ring = level.rings_for(radius_m)
        origin = h3.latlng_to_cell(lat, lng, level.resolution)
        cells = level.cells
        ttl = self.ttl_s
        sin, asin, sqrt, radians = math.sin, math.asin, math.sqrt, math.radians
        phi0 = radians(lat)
        cos0 = math.cos(phi0)
        # (distance, driver_id, position) of drivers that may be among the `limit` nearest;
        # cut back to the `limit` nearest whenever it holds twice that.
        found: list[tuple[float, str, Position]] = []
        full = 2 * limit
        worst = radius_m  # nothing farther than this can be among the `limit` nearest
        a_max = _a_bound(worst)
        for ring in range(max_ring + 1):
            if len(found) >= limit:
                found.sort()
                del found[limit:]
                worst = found[-1][0]
                if worst < level.lower_bound_m(ring):
                    break
                a_max = _a_bound(worst)
            for cell in _ring(origin, ring):
                boxes = cells.get(cell)
                if boxes is None:
                    continue
                for box in boxes.values():
                    s = sin((box.phi - phi0) * 0.5)
                    t = sin((box.lng - lng) * _HALF_RADIAN)
                    centre_m = _TWO_R * asin(min(1.0, sqrt(s * s + cos0 * box.cos_phi * t * t)))
                    if centre_m - box.reach_m > worst + _CELL_SLACK_M:
                        continue
                    for seen_at, phi, cos_phi, plng, pos in box.members.values():
                        if now - seen_at >= ttl:
                            continue
                        s = sin((phi - phi0) * 0.5)
                        t = sin((plng - lng) * _HALF_RADIAN)
                        if s * s + cos0 * cos_phi * t * t > a_max:
                            continue
                        # haversine_m(lat, lng, pos.lat, pos.lng), operation for operation.
                        dl = radians(plng - lng)
                        a = sin((phi - phi0) / 2) ** 2 + cos0 * cos_phi * sin(dl / 2) ** 2
                        d = _TWO_R * asin(min(1.0, sqrt(a)))
                        if d > worst:
                            continue
                        found.append((d, pos.driver_id, pos))
                        if len(found) >= full:
                            found.sort()
                            del found[limit:]
                            worst = found[-1][0]
                            a_max = _a_bound(worst)
        found.sort()
        return [Nearby(pos, d) for d, _, pos in found[:limit]]

    def supply(self, resolution: int, now: float) -> dict[int, int]:
        """Fresh drivers per cell at a resolution no finer than the index's."""
        if not 0 <= resolution <= self.resolution:
            raise ValueError(f"resolution must be between 0 and {self.resolution}")
        counts: dict[int, int] = {}
        for _, _, _, _, pos in self._drivers.values():
            if now - pos.seen_at >= self.ttl_s:
                continue
            cell = (
                pos.cell
                if resolution == self.resolution
                else h3.cell_to_parent(pos.cell, resolution)
            )
            counts[cell] = counts.get(cell, 0) + 1
        return counts
