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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from polder.common.geoindex import LocationIndex, Nearby, Position, measured_within
from polder.dispatch.domain.availability import FreshIdle
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

    __slots__ = ("_positions", "_tree")

    def __init__(self, positions: Sequence[Position]) -> None:
        self._positions = list(positions)
        n = len(self._positions)
        lat = np.fromiter((p.lat for p in self._positions), float, n)
        lng = np.fromiter((p.lng for p in self._positions), float, n)
        self._tree = cKDTree(_unit_vectors(lat, lng).reshape(n, 3))

    @classmethod
    def of(cls, workers: Mapping[str, Worker], index: LocationIndex, now: float) -> WorkerTree:
        """The workers in ``workers`` with a fresh position in ``index`` at ``now``, at that
        position (as the ring search over ``index`` sees them)."""
        if isinstance(workers, FreshIdle) and workers.indexed_by(index, now):
            return cls(workers.positions())
        get = index.get
        return cls([p for d in workers if (p := get(d)) is not None and index.is_fresh(p, now)])

    def __len__(self) -> int:
        return len(self._positions)

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
        """``nearest`` for each query, the tree asked once for them all."""
        if not queries:
            return []
        if limit <= 0 or radius_m <= 0 or not self._positions:
            return [[] for _ in queries]
        ask = min(len(self._positions), limit + _EXTRA + max(len(q[2]) for q in queries))
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
        n = len(self._positions)
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
        positions = self._positions
        if excluded:
            found = [positions[j] for j in indices if positions[j].driver_id not in excluded]
        else:
            found = [positions[j] for j in indices]
        kept = measured_within(lat, lng, found, radius_m)
        kept.sort()
        return kept
