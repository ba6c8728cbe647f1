"""In-memory index of the latest position of each driver, keyed by H3 cell (integer API).

Shared by the location service (all fresh drivers) and dispatch (available workers).

Positions carry two clocks: ``recorded_at`` (device, orders a driver's pings so an older ping
never overwrites a newer one) and ``seen_at`` (server, decides freshness: a driver with no ping
for ``ttl_s`` leaves the index). All times are epoch seconds; ``now`` is always passed in. A
device clock set back mid-shift (ingest takes its pings again after one batch) is told by the
two clocks together: see ``LocationIndex.upsert``.

The index never changes a ``Position`` it has handed out (an upsert makes a new one), so
callers may keep them; they must not modify them.

Layout: drivers are grouped by their cell at the index's resolution; each occupied cell knows
its centre and how far its members reach from it, so a search can skip it whole. Coarser levels
group the occupied cells by ancestor, for searches that must walk far (wide radius, few drivers).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import h3.api.basic_int as h3
from h3 import H3BaseException

# Centre-to-centre spacing of neighbouring cells is about sqrt(3) x the average edge; cells
# vary in size over the globe, so ring distances are bounded with half of it to stay exact.
_SPACING_SAFETY = 0.5
# The ring search stops as soon as it has ``limit`` drivers closer than the next ring can hold,
# so in a busy city it reads a handful of rings whatever the radius. Only sparse areas walk
# out to the radius; a level that would need more rings than this for it is not used (unless
# no coarser one is left).
_MAX_RINGS = 30
# Coarser levels kept besides the index's own resolution (its cells' ancestors), so that a wide
# radius never walks more than ``_MAX_RINGS`` rings of small cells.
_COARSER_LEVELS = 3

_TWO_R = 2 * 6_371_008.8  # metres, as in haversine_m
# x * _HALF_RADIAN == math.radians(x) / 2, bit for bit (halving is exact).
_HALF_RADIAN = math.radians(1.0) / 2
# nearby() first compares haversine's ``a`` term, which is cheap, with the bound for the
# distance a driver must beat; only drivers that pass are measured, exactly as haversine_m does.
# The bound is widened far beyond float rounding (a few 1e-16, relative) so that the cheap
# comparison can never drop a driver that haversine_m would keep.
_A_SLACK_REL, _A_SLACK_ABS = 1e-9, 1e-30
# A cell is skipped when the query point is farther from its centre than the distance to beat
# plus the cell's reach plus this. Float rounding in those distances is far below a millimetre
# (about 0.2 m next to the antipode, where asin is steep).
_CELL_SLACK_M = 1.0
# Level choice (speed only; every level gives the same answer): a search expected to end within
# this many rings uses the index's own cells. Otherwise each level's cost is estimated as
# rings x _COST_RING + cells x _COST_CELL + occupied cells x _COST_BOX (relative costs, in
# microseconds, of an H3 ring, a cell looked up, an occupied cell checked), and a coarser level
# must look clearly cheaper to be chosen.
_FINE_ONLY_RINGS = 4
_COST_RING, _COST_CELL, _COST_BOX = 3.5, 0.35, 0.5
_COARSE_HANDICAP = 1.3
# H3 index bits: the resolution in 4 bits at 52, then 15 digits of 3 bits, unused digits all 7.
_RES_SHIFT = 52
ALL_BUT_RES = ~(0xF << _RES_SHIFT)
# A position received later whose device time went back by more than the server's time moved
# on, plus this, is from a device clock set back (seconds): two replicas that took a driver's
# batches at the same moment differ by a batch's span, a clock set back by minutes.
_SET_BACK_S = 10.0


class _Precomputed:
    """Values the index derives from a position when it stores it (not dataclass fields)."""

    __slots__ = ("_phi", "_cos_phi")
    _phi: float  # math.radians(lat)
    _cos_phi: float  # math.cos(_phi)

    def _set_latitude(self, lat: float) -> None:
        self._phi = phi = math.radians(lat)
        self._cos_phi = math.cos(phi)


@dataclass(slots=True)
class Position(_Precomputed):
    driver_id: str
    lat: float
    lng: float
    cell: int
    recorded_at: float
    seen_at: float


class Nearby(NamedTuple):
    """A driver a search found, and how far (a named tuple: a batch's searches make thousands,
    and a frozen dataclass's ``__init__`` costs three times as much)."""

    position: Position
    distance_m: float


def cell_resolution(cell: int) -> int:
    """``h3.get_resolution(cell)`` for a valid cell, from its bits."""
    return (cell >> _RES_SHIFT) & 0xF


def parent_bits(resolution: int) -> int:
    """``(cell & ALL_BUT_RES) | parent_bits(r)`` is ``h3.cell_to_parent(cell, r)`` for a valid
    cell of resolution r or finer: the resolution field set to r, the digits below r unused (7).
    Bit operations, without a call into the H3 library: hot loops take parents this way."""
    return (resolution << _RES_SHIFT) | ((1 << 3 * (15 - resolution)) - 1)


def haversine_m(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))


def measured_within(
    lat: float, lng: float, positions: Iterable[Position], radius_m: float
) -> list[tuple[float, str, Position]]:
    """``(haversine_m(lat, lng, p.lat, p.lng), p.driver_id, p)`` for each position ``p`` no
    farther than ``radius_m``, in the order given: the distances ``nearby`` gives, to the bit,
    from the values the index keeps with each position."""
    sin, asin, sqrt, radians = math.sin, math.asin, math.sqrt, math.radians
    phi0 = radians(lat)
    cos0 = math.cos(phi0)
    kept = []
    for pos in positions:
        # haversine_m(lat, lng, pos.lat, pos.lng), operation for operation.
        dl = radians(pos.lng - lng)
        a = sin((pos._phi - phi0) / 2) ** 2 + cos0 * pos._cos_phi * sin(dl / 2) ** 2
        d = _TWO_R * asin(min(1.0, sqrt(a)))
        if d <= radius_m:
            kept.append((d, pos.driver_id, pos))
    return kept


# Metres per degree of a great circle, on haversine_m's sphere.
_M_PER_DEGREE = math.radians(1.0) * 6_371_008.8
# Room for rounding in the path bound below, relative and absolute: haversine_m takes its
# differences between angles in radians (about 1e-16 of a radian, ~1e-9 m, absolute) and
# rounds a few ulps besides; this is hundreds of times more.
_PATH_SLACK, _PATH_SLACK_M = 1 + 1e-9, 1e-6
# Only paths shorter than this take the bound: farther out haversine_m's asin grows steep (near
# the antipode it is off by decimetres, beyond any slack), and the cheap answer is rare anyway.
_PATH_MAX_M = 1_000_000.0


def within_m(lat1: float, lng1: float, lat2: float, lng2: float, limit_m: float) -> bool:
    """``not haversine_m(lat1, lng1, lat2, lng2) > limit_m``, mostly without trigonometry.

    Along the meridian, then along a parallel (no longer than the equator's arc) is a path
    between the points of at most (|dlat| + |dlng|) degrees of a great circle, and no path is
    shorter than the great circle: when that bound is within the limit, so is the distance.
    Only a pair the bound cannot clear is measured, so the answer is haversine_m's either way
    (ingest checks every ping's jump from the one before; nearly all clear the bound).
    """
    path_m = (abs(lat2 - lat1) + abs(lng2 - lng1)) * _M_PER_DEGREE
    if path_m <= _PATH_MAX_M and path_m * _PATH_SLACK + _PATH_SLACK_M <= limit_m:
        return True
    return not haversine_m(lat1, lng1, lat2, lng2) > limit_m


def _ring(origin: int, k: int) -> tuple[int, ...]:
    """The cells k steps from origin. Rings never change and searches keep coming back to
    the same cells (a station's, a busy street's), so the near ones are kept (see below)."""
    if k == 0:
        return (origin,)
    if k <= _KEPT_RINGS:
        return _kept_ring(origin, k)
    return _grid_ring(origin, k)


def _grid_ring(origin: int, k: int) -> tuple[int, ...]:
    try:
        return tuple(h3.grid_ring(origin, k))
    except H3BaseException:  # pentagon distortion: take the disk minus the inner disk
        inner = set(h3.grid_disk(origin, k - 1))
        return tuple(c for c in h3.grid_disk(origin, k) if c not in inner)


# Rings up to this far are kept, for this many (origin, k): a kept ring holds at most 6 x 8
# cells (about 2.1 KB), so the cache never passes ~35 MB a process, and holds far less (most
# rings searched are one to three steps out). A ring from H3 costs ~5 µs and a batch walks
# three or four per order: about a tenth of a batch's candidate search.
_KEPT_RINGS = 8
_kept_ring = functools.lru_cache(maxsize=1 << 14)(_grid_ring)


def _a_bound(distance_m: float) -> float:
    """At least haversine's ``a`` (as nearby() computes it) for any point within distance_m."""
    half_angle = distance_m / _TWO_R
    if half_angle >= 1.5:  # sin() flattens out towards the antipode: no useful bound
        return math.inf
    return math.sin(half_angle) ** 2 * (1 + _A_SLACK_REL) + _A_SLACK_ABS


class _Cell(dict[str, Position]):
    """The drivers in one cell at the index's resolution, with how far they reach from its centre.

    ``reach_m`` only grows while the cell is occupied (it covers every position a member has
    had), so no member is farther than that from the centre: a query point farther than
    ``worst + reach_m`` from the centre has no driver closer than ``worst`` here.
    """

    __slots__ = ("phi", "cos_phi", "lng", "reach_a", "reach_m")

    def __init__(self, cell: int) -> None:  # starts empty: dict.__init__ has nothing to do
        lat, lng = h3.cell_to_latlng(cell)
        self.phi = math.radians(lat)
        self.cos_phi = math.cos(self.phi)
        self.lng = lng
        self.reach_a = 0.0  # haversine's `a` term for reach_m
        self.reach_m = 0.0

    def widen(self, a: float) -> None:
        """Make the reach cover a member whose `a` from the centre is this."""
        self.reach_a = a
        self.reach_m = _TWO_R * math.asin(min(1.0, math.sqrt(a)))


class _Level:
    """Ring geometry at one resolution; below the index's, its occupied cells by ancestor."""

    __slots__ = ("resolution", "min_spacing_m", "cells", "fine_share", "parent_bits")

    def __init__(self, resolution: int) -> None:
        self.resolution = resolution
        edge_m = float(h3.average_hexagon_edge_length(resolution, unit="m"))
        self.min_spacing_m = math.sqrt(3) * edge_m * _SPACING_SAFETY
        self.cells: dict[int, dict[int, _Cell]] = {}  # ancestor -> occupied cells under it
        # The part of one of this level's cells that one cell at the index's resolution covers.
        self.fine_share = 1.0
        self.parent_bits = parent_bits(resolution)

    def key(self, cell: int) -> int:
        """``h3.cell_to_parent(cell, self.resolution)`` for a valid cell at least as fine."""
        return (cell & ALL_BUT_RES) | self.parent_bits

    def rings_for(self, radius_m: float) -> int:
        return math.ceil(radius_m / self.min_spacing_m) + 1

    def lower_bound_m(self, ring: int) -> float:
        """No point in a cell ``ring`` steps from the origin cell is closer than this."""
        return max(0, ring - 1) * self.min_spacing_m


class LocationIndex:
    def __init__(self, resolution: int = 9, ttl_s: float = 60.0) -> None:
        self.resolution = resolution
        self.ttl_s = ttl_s
        self._cells: dict[int, _Cell] = {}  # the occupied cells at the index's resolution
        # Finest first: the index's resolution, then the coarser ones.
        self._levels = [
            _Level(r) for r in range(resolution, max(-1, resolution - 1 - _COARSER_LEVELS), -1)
        ]
        self._coarser = self._levels[1:]
        for level in self._coarser:
            level.fine_share = 7.0 ** (level.resolution - resolution)
        # Insertion order = order of last sighting, so expiry pops from the front.
        self._drivers: OrderedDict[str, Position] = OrderedDict()
        # Told every position the index takes, and every driver it drops (dispatch keeps its
        # workers' positions as arrays).
        self.on_upsert: Callable[[Position], None] | None = None
        self.on_remove: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return len(self._drivers)

    def __iter__(self) -> Iterator[Position]:
        return iter(self._drivers.values())

    def get(self, driver_id: str) -> Position | None:
        return self._drivers.get(driver_id)

    def __getitem__(self, driver_id: str) -> Position:
        """The driver's position; KeyError if the index has none."""
        return self._drivers[driver_id]

    def upsert(
        self, driver_id: str, lat: float, lng: float, recorded_at: float, seen_at: float
    ) -> bool:
        """Record a position unless the driver already has a newer one. True if it was applied.

        Newer is by device time, except across a device clock set back: a position received
        later (``seen_at``) whose ``recorded_at`` went back further than the server's clock
        moved on (by ``_SET_BACK_S`` more) is newer, and one received earlier whose
        ``recorded_at`` is ahead by more than that (a redelivery from before the set back) is
        older."""
        drivers = self._drivers
        old = drivers.get(driver_id)
        if old is not None:
            if recorded_at <= old.recorded_at:
                if (
                    seen_at <= old.seen_at
                    or old.recorded_at - recorded_at <= seen_at - old.seen_at + _SET_BACK_S
                ):
                    return False
            elif (
                seen_at < old.seen_at
                and recorded_at - old.recorded_at > old.seen_at - seen_at + _SET_BACK_S
            ):
                return False
            if old.seen_at > seen_at:  # max(seen_at, old.seen_at)
                seen_at = old.seen_at
        cell = h3.latlng_to_cell(lat, lng, self.resolution)
        pos = Position(driver_id, lat, lng, cell, recorded_at, seen_at)
        pos._set_latitude(lat)
        drivers[driver_id] = pos
        if old is not None:
            drivers.move_to_end(driver_id)
            if old.cell != cell:
                self._leave(old.cell, driver_id)
        box = self._cells.get(cell)
        if box is None:
            box = self._open(cell)
        box[driver_id] = pos
        # haversine's `a` from the centre with x in place of sin(x): never less, and cheaper
        # (across the antimeridian it is far more, so such a cell is never skipped: still exact).
        half_dphi = (pos._phi - box.phi) * 0.5
        half_dlng = (lng - box.lng) * _HALF_RADIAN
        a = half_dphi * half_dphi + box.cos_phi * pos._cos_phi * half_dlng * half_dlng
        if a > box.reach_a:
            box.widen(a)
        if self.on_upsert is not None:
            self.on_upsert(pos)
        return True

    def _open(self, cell: int) -> _Cell:
        box = self._cells[cell] = _Cell(cell)
        base = cell & ALL_BUT_RES
        for level in self._coarser:
            key = base | level.parent_bits  # level.key(cell)
            children = level.cells.get(key)
            if children is None:
                level.cells[key] = {cell: box}
            else:
                children[cell] = box
        return box

    def _leave(self, cell: int, driver_id: str) -> None:
        box = self._cells[cell]
        del box[driver_id]
        if box:
            return
        del self._cells[cell]
        for level in self._coarser:
            key = level.key(cell)
            children = level.cells[key]
            del children[cell]
            if not children:
                del level.cells[key]

    def remove(self, driver_id: str) -> bool:
        pos = self._drivers.pop(driver_id, None)
        if pos is None:
            return False
        self._leave(pos.cell, driver_id)
        if self.on_remove is not None:
            self.on_remove(driver_id)
        return True

    def expire(self, now: float) -> int:
        """Drop drivers not seen for the TTL. Returns how many left."""
        cutoff = now - self.ttl_s
        drivers = self._drivers
        gone = 0
        while drivers:
            pos = next(iter(drivers.values()))
            if pos.seen_at > cutoff:
                break
            del drivers[pos.driver_id]
            self._leave(pos.cell, pos.driver_id)
            if self.on_remove is not None:
                self.on_remove(pos.driver_id)
            gone += 1
        return gone

    def is_fresh(self, pos: Position, now: float) -> bool:
        return now - pos.seen_at < self.ttl_s

    def nearby(
        self,
        lat: float,
        lng: float,
        radius_m: float,
        limit: int,
        now: float,
        accept: Callable[[str], bool] | None = None,
    ) -> list[Nearby]:
        """Fresh drivers within ``radius_m`` of a point, nearest first, at most ``limit``.

        The same as sorting every fresh driver by (haversine_m from the point, driver_id) and
        keeping the first ``limit`` within the radius. Rings of cells are searched outwards;
        the search stops as soon as the ``limit``-th nearest driver found is closer than
        anything the next ring could hold, and skips cells whose drivers are all farther.
        ``accept``: only drivers whose id it accepts count, so a caller that wants some
        drivers only never has to ask again for more. It is asked of every fresh driver in the
        cells searched, before any distance is measured (a batch's idle-worker lookup is far
        cheaper than the trigonometry it spares for the busy half of the city): keep it cheap.
        """
        if limit <= 0 or radius_m <= 0:
            return []
        origin = h3.latlng_to_cell(lat, lng, self.resolution)
        level = self._pick_level(origin, radius_m, limit)
        fine = self._cells if level is self._levels[0] else None
        by_ancestor = level.cells
        if fine is None:
            origin = h3.latlng_to_cell(lat, lng, level.resolution)
        ttl = self.ttl_s
        sin, asin, sqrt, radians = math.sin, math.asin, math.sqrt, math.radians
        half_radian, two_r, cell_slack = _HALF_RADIAN, _TWO_R, _CELL_SLACK_M
        phi0 = radians(lat)
        cos0 = math.cos(phi0)
        # (distance, driver_id, position) of drivers that may be among the `limit` nearest;
        # cut back to the `limit` nearest whenever it holds twice as many. Ties in distance go
        # to the smaller driver_id, as in a full sort.
        found: list[tuple[float, str, Position]] = []
        full = 2 * limit
        worst = radius_m  # a driver farther than this cannot be among the `limit` nearest
        a_max = _a_bound(worst)
        boxes: Iterable[_Cell]
        for ring in range(level.rings_for(radius_m) + 1):
            if len(found) >= limit:
                found.sort()
                del found[limit:]
                worst = found[-1][0]
                if worst < level.lower_bound_m(ring):
                    break
                a_max = _a_bound(worst)
            for cell in _ring(origin, ring):
                if fine is not None:
                    box = fine.get(cell)
                    if box is None:
                        continue
                    boxes = (box,)
                else:
                    children = by_ancestor.get(cell)
                    if children is None:
                        continue
                    boxes = children.values()
                for box in boxes:
                    # Skip the cell if even its members' reach cannot come within `worst`.
                    s = sin((box.phi - phi0) * 0.5)
                    t = sin((box.lng - lng) * half_radian)
                    centre_m = two_r * asin(min(1.0, sqrt(s * s + cos0 * box.cos_phi * t * t)))
                    if centre_m - box.reach_m > worst + cell_slack:
                        continue
                    for pos in box.values():
                        if now - pos.seen_at >= ttl or (
                            accept is not None and not accept(pos.driver_id)
                        ):
                            continue
                        # haversine's `a`, the latitude term first: compared with a_max, it
                        # drops most drivers that are too far without asin or sqrt.
                        phi = pos._phi
                        s = sin((phi - phi0) * 0.5)
                        s *= s
                        if s > a_max:
                            continue
                        cos_phi = pos._cos_phi
                        t = sin((pos.lng - lng) * half_radian)
                        if s + cos0 * cos_phi * t * t > a_max:
                            continue
                        # haversine_m(lat, lng, pos.lat, pos.lng), operation for operation.
                        dl = radians(pos.lng - lng)
                        a = sin((phi - phi0) / 2) ** 2 + cos0 * cos_phi * sin(dl / 2) ** 2
                        d = two_r * asin(min(1.0, sqrt(a)))
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

    def _pick_level(self, origin: int, radius_m: float, limit: int) -> _Level:
        """The level expected to answer fastest: the index's own cells wherever the search
        stays within a few rings of them, coarser ones where it must walk far (sparse areas)."""
        levels = self._levels
        fine = levels[0]
        near_m = _FINE_ONLY_RINGS * fine.min_spacing_m
        if radius_m <= near_m or len(levels) == 1:
            return fine
        # Drivers per cell around the query, from the share of occupied cells under the coarsest
        # level's cell (as if Poisson), and so how far the search should have to walk to find
        # `limit` of them (a disk of `limit` cells' area holds about `limit` x per_cell).
        top = levels[-1]
        children = top.cells.get(top.key(origin))
        share = 0.0 if children is None else len(children) * top.fine_share
        walk_m = radius_m
        if share > 0.0:
            per_cell = -math.log(1.0 - min(share, 0.99))
            walk_m = min(radius_m, fine.min_spacing_m * math.sqrt(limit * 1.1 / per_cell))
            if walk_m <= near_m:
                return fine
        best, best_cost = levels[-1], math.inf
        for level in levels:
            rings = level.rings_for(radius_m)
            if rings > _MAX_RINGS:
                continue
            rings = min(rings, int(walk_m / level.min_spacing_m) + 3)
            cells = 3 * rings * (rings + 1) + 1
            occupied = cells * share / level.fine_share
            cost = rings * _COST_RING + cells * _COST_CELL + occupied * _COST_BOX
            if level is not fine:
                cost *= _COARSE_HANDICAP
            if cost < best_cost:
                best, best_cost = level, cost
        return best

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
