"""A batch's available workers in a k-d tree: each order's nearest, as the ring search finds them.

The ring search (``LocationIndex.nearby``) answers one pickup at a time in pure Python: ~200 µs
an order in the benchmark city (three rings, ~28 cells, ~50 drivers looked at), most of a
250-order batch's solve. A batch asks that question of the same workers hundreds of times in a
row, so it pays to put them, once, into a structure that answers in C: their positions as
points on the unit sphere in ``scipy.spatial.cKDTree``, where the straight-line (chord) distance
grows with the great-circle one. Building it for 5 000 workers and asking 250 pickups takes
~10 ms; the ring search, ~50.

The answer is the ring search's, to the bit: the tree only proposes, and every proposal is
measured with ``haversine_m`` (the index's own distance, operation for operation) and sorted
by (distance, driver_id). The tree's chord distances round differently, so each query checks
that nothing it did not return could come within rounding of the last driver kept, and asks
again for everything up to that distance if it could (ties, workers piled on one spot).

In the matcher the idle workers' positions are kept as arrays (``WorkerPoints``), updated as
pings and state changes arrive, so a batch builds its tree from a few array operations rather
than by walking thousands of objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from polder.common.geoindex import LocationIndex, Nearby, Position, measured_within
from polder.dispatch.domain.availability import Availability, FreshIdle
from polder.dispatch.domain.match_types import Worker

_R = 6_371_008.8  # metres, haversine_m's sphere
# A chord bound is widened by this much, relative and absolute (on the unit sphere; the
# absolute part is ~6 µm), far beyond the rounding of either distance, so no driver the exact
# distance would keep is ever left out by the tree.
_CHORD_SLACK_REL, _CHORD_SLACK_ABS = 1e-9, 1e-12
# Extra neighbours asked of the tree beyond the limit (and the order's excluded workers): the
# answer is complete at the first asking unless the one beyond the limit ties (within
# rounding) with the last one kept. More would be measured for nothing nearly always.
_EXTRA = 1

Query = tuple[float, float, frozenset[str]]  # pickup lat, lng, and the workers to leave out


def chord_bound(distance_m: float) -> float:
    """A chord length on the unit sphere no shorter than that of any two points at most
    ``distance_m`` apart (great circle, haversine_m's sphere), rounding included."""
    half_angle = min(distance_m / (2 * _R), math.pi / 2)
    return 2 * math.sin(half_angle) * (1 + _CHORD_SLACK_REL) + _CHORD_SLACK_ABS


def _unit_vectors(lat_deg: np.ndarray, lng_deg: np.ndarray) -> np.ndarray:
    phi, lam = np.radians(lat_deg), np.radians(lng_deg)
    cos_phi = np.cos(phi)
    return np.column_stack((cos_phi * np.cos(lam), cos_phi * np.sin(lam), np.sin(phi)))


class WorkerTree:
    """The positions of a batch's available workers, searchable nearest first.

    ``nearest(lat, lng, r, k, excluded)`` is ``index.nearby(lat, lng, r, k, now, accept)``
    where ``accept`` takes these workers but not the excluded ones: the same list.
    """

    __slots__ = ("_ids", "_get", "_tree")

    def __init__(self, points: np.ndarray, ids: Sequence[str], index: LocationIndex) -> None:
        """``points``: each worker's position as a unit vector (one row per id, in ``ids``'s
        order); ``index`` has every one of them, at that position."""
        self._ids = ids
        self._get = index.__getitem__
        self._tree = cKDTree(points.reshape(len(ids), 3))

    @classmethod
    def of(cls, workers: Mapping[str, Worker], index: LocationIndex, now: float) -> WorkerTree:
        """The workers in ``workers`` with a fresh position in ``index`` at ``now``, at that
        position (as the ring search over ``index`` sees them)."""
        if isinstance(workers, FreshIdle) and workers.indexed_by(index, now):
            if workers.points is not None:
                return workers.points.tree(now)
            return cls.of_positions(workers.positions(), index)
        get = index.get
        fresh = [p for d in workers if (p := get(d)) is not None and index.is_fresh(p, now)]
        return cls.of_positions(fresh, index)

    @classmethod
    def of_positions(cls, positions: Sequence[Position], index: LocationIndex) -> WorkerTree:
        n = len(positions)
        lat = np.fromiter((p.lat for p in positions), float, n)
        lng = np.fromiter((p.lng for p in positions), float, n)
        return cls(_unit_vectors(lat, lng), [p.driver_id for p in positions], index)

    def __len__(self) -> int:
        return len(self._ids)

    def nearest(
        self,
        lat: float,
        lng: float,
        radius_m: float,
        limit: int,
        excluded: frozenset[str] = frozenset(),
    ) -> list[Nearby]:
        """The ``limit`` workers nearest the point within ``radius_m``, nearest first (ties by
        driver_id), leaving out ``excluded``."""
        return self.nearest_each([(lat, lng, excluded)], radius_m, limit)[0]

    def nearest_each(
        self, queries: Sequence[Query], radius_m: float, limit: int
    ) -> list[list[Nearby]]:
        """``nearest`` for each query: those that exclude no one asked of the tree at once, the
        others each on its own (they ask for more, as many more as they exclude)."""
        if limit <= 0 or radius_m <= 0 or not self._ids:
            return [[] for _ in queries]
        answers: list[list[Nearby]] = [[] for _ in queries]
        plain = [i for i, q in enumerate(queries) if not q[2]]
        for group in [plain, *([i] for i, q in enumerate(queries) if q[2])]:
            if group:
                asked = [queries[i] for i in group]
                for i, found in zip(group, self._ask(asked, radius_m, limit), strict=True):
                    answers[i] = found
        return answers

    def _ask(self, queries: Sequence[Query], radius_m: float, limit: int) -> list[list[Nearby]]:
        ask = min(len(self._ids), limit + _EXTRA + max(len(q[2]) for q in queries))
        points = _unit_vectors(
            np.fromiter((q[0] for q in queries), float, len(queries)),
            np.fromiter((q[1] for q in queries), float, len(queries)),
        )
        chords, found = self._tree.query(points, k=ask, distance_upper_bound=chord_bound(radius_m))
        chords = np.asarray(chords).reshape(len(queries), ask).tolist()
        found = np.asarray(found).reshape(len(queries), ask).tolist()
        return [
            self._exact(query, radius_m, limit, row, chord_row, points[i])
            for i, (query, row, chord_row) in enumerate(zip(queries, found, chords, strict=True))
        ]

    def _exact(
        self,
        query: Query,
        radius_m: float,
        limit: int,
        row: list[int],
        chord_row: list[float],
        point: np.ndarray,
    ) -> list[Nearby]:
        """The tree's proposals for one query, measured, sorted and checked complete."""
        n = len(self._ids)
        kept = self._measured(query, radius_m, (j for j in row if j < n))
        asked_all = row[-1] >= n  # fewer came back than were asked: all within the bound did
        if not asked_all and len(kept) >= limit:
            # Every driver not returned is at least chord_row[-1] away; the tree's rounding
            # cannot put one within the limit-th kept driver's distance if that chord is
            # clearly shorter.
            if chord_bound(kept[limit - 1][0]) < chord_row[-1]:
                asked_all = True
            else:
                radius_m = kept[limit - 1][0]
        if not asked_all:
            # Ties, many excluded or crowded spots: everything the rounding could let in.
            within = self._tree.query_ball_point(point, chord_bound(radius_m))
            kept = self._measured(query, radius_m, within)
        return [Nearby(pos, d) for d, _, pos in kept[:limit]]

    def _measured(
        self, query: Query, radius_m: float, indices: Iterable[int]
    ) -> list[tuple[float, str, Position]]:
        lat, lng, excluded = query
        ids, get = self._ids, self._get
        found = [get(ids[j]) for j in indices if not excluded or ids[j] not in excluded]
        kept = measured_within(lat, lng, found, radius_m)
        kept.sort()
        return kept


class WorkerPoints:
    """Where the idle workers are, as arrays kept up to date as positions and states change, so
    that a batch builds its tree without walking every idle worker's Python objects.

    That walk (the idle workers, each one's position, its coordinates) reads thousands of
    objects scattered over the heap, in a running matcher ~1-2 µs each: 10-30 ms of every
    batch with 8 000 idle workers. Here a batch takes the rows that are idle and fresh with a
    few array operations.

    Told of every change (see ``following``): ``moved`` when the index takes a position,
    ``removed`` when it drops one (the matcher's index expires stale positions at each batch;
    freshness is checked at each batch too), ``idle_changed`` when a worker's state is set. A
    driver's row stays theirs for good.
    """

    __slots__ = ("index", "idle", "_rows", "_names", "_xyz", "_seen", "_idle")

    def __init__(
        self, index: LocationIndex, idle: Mapping[str, float | None], capacity: int = 1024
    ) -> None:
        """Empty points; ``following`` makes them follow an index and an availability."""
        self.index = index
        self.idle = idle  # the availability's idle workers, whose states these follow
        self._rows: dict[str, int] = {}  # driver_id -> row
        # each row's driver_id: a batch takes its workers' ids in one indexing
        self._names = np.empty(capacity, dtype=object)
        self._xyz = np.zeros((capacity, 3))
        self._seen = np.full(capacity, -np.inf)  # no position yet: never fresh
        self._idle = np.zeros(capacity, dtype=bool)

    @classmethod
    def following(cls, index: LocationIndex, availability: Availability) -> WorkerPoints:
        """Points that follow this index and these workers' states from now on, starting from
        what they hold now. Each has one listener: a second would leave the first behind,
        unseen, so it is refused."""
        if index.on_upsert is not None or index.on_remove is not None:
            raise ValueError("this index already has a listener")
        if availability.on_idle is not None:
            raise ValueError("this availability already has a listener")
        points = cls(index, availability.idle)
        for pos in index:
            points.moved(pos)
        for driver_id in availability.idle:
            points.idle_changed(driver_id, True)
        index.on_upsert, index.on_remove = points.moved, points.removed
        availability.on_idle = points.idle_changed
        return points

    def follows(self, index: LocationIndex, idle: Mapping[str, float | None]) -> bool:
        """Whether these are the points of this index's positions and these idle workers."""
        return index is self.index and idle is self.idle

    def moved(self, pos: Position) -> None:
        """The index took this position."""
        row = self._row(pos.driver_id)
        phi, lam = math.radians(pos.lat), math.radians(pos.lng)
        cos_phi = math.cos(phi)
        self._xyz[row] = (cos_phi * math.cos(lam), cos_phi * math.sin(lam), math.sin(phi))
        self._seen[row] = pos.seen_at

    def removed(self, driver_id: str) -> None:
        """The index dropped this driver's position."""
        row = self._rows.get(driver_id)
        if row is not None:
            self._seen[row] = -np.inf

    def idle_changed(self, driver_id: str, idle: bool) -> None:
        if idle:
            new = self._row(driver_id)  # first: it may grow the arrays
            self._idle[new] = True
        elif (row := self._rows.get(driver_id)) is not None:
            self._idle[row] = False

    def tree(self, now: float) -> WorkerTree:
        """The idle workers with a position fresh at ``now`` (by the index's TTL)."""
        n = len(self._rows)
        live = np.flatnonzero(self._idle[:n] & (now - self._seen[:n] < self.index.ttl_s))
        return WorkerTree(self._xyz[live], self._names[live].tolist(), self.index)

    def _row(self, driver_id: str) -> int:
        row = self._rows.get(driver_id)
        if row is not None:
            return row
        row = self._rows[driver_id] = len(self._rows)
        if row == len(self._seen):
            grow = len(self._seen)
            self._names = np.concatenate((self._names, np.empty(grow, dtype=object)))
            self._xyz = np.concatenate((self._xyz, np.zeros((grow, 3))))
            self._seen = np.concatenate((self._seen, np.full(grow, -np.inf)))
            self._idle = np.concatenate((self._idle, np.zeros(grow, dtype=bool)))
        self._names[row] = driver_id
        return row
