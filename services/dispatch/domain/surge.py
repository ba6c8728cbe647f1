"""Surge: a capped price multiplier per H3 res-7 cell from recent demand and supply.

For a cell ``c`` at time ``now``, over the window ``(now - window_s, now]``:

    D = orders recorded in c              + w x orders recorded in the six cells around c
    S = mean available workers in c       + w x the same for the six cells around c
        (mean over the supply snapshots of the window; a cell absent from a snapshot had none)
    pressure   = D / max(S, min_supply)
    multiplier = 1 + sensitivity x (pressure - 1), rounded down to a 0.1 step, within [1, cap]

``w`` is ``neighbour_weight``: a res-7 cell is about 1.4 km across, so workers next door can
serve it and orders next door compete for its workers; 0 switches the smoothing off.
Supply at least equal to demand gives 1.0, and so does a window without any supply snapshot
(no evidence of scarcity). ``min_supply`` keeps a lone order in an empty cell at night from
reaching the cap. Rounding down means a customer never pays for a step not fully reached.

Events are counted in buckets of ``bucket_s``, so an event leaves the window up to one bucket
early. Data older than the window is evicted as time moves on (a full sweep once a window),
so memory stays within about two windows of buckets per active cell.
All times are epoch seconds, passed in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

import h3.api.basic_int as h3

from polder.common.geoindex import ALL_BUT_RES, cell_resolution, parent_bits

SURGE_RESOLUTION = 7
_CELL7_BITS = parent_bits(SURGE_RESOLUTION)
_STEP = Decimal("0.1")
_ONE = Decimal(1)
_NO_SURGE = Decimal("1.0")


@dataclass(frozen=True, slots=True)
class SurgeConfig:
    window_s: float = 300.0
    cap: Decimal = Decimal("3.0")
    sensitivity: Decimal = Decimal("0.5")
    neighbour_weight: Decimal = Decimal("0.5")
    min_supply: Decimal = Decimal(1)
    bucket_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.bucket_s <= self.window_s:
            raise ValueError("need 0 < bucket_s <= window_s")
        if self.cap < 1 or self.cap % _STEP != 0:
            raise ValueError("cap must be at least 1 and a multiple of 0.1")
        if self.sensitivity <= 0 or self.min_supply <= 0:
            raise ValueError("sensitivity and min_supply must be positive")
        if not 0 <= self.neighbour_weight <= 1:
            raise ValueError("neighbour_weight must lie in [0, 1]")


@dataclass(frozen=True, slots=True)
class SurgePressure:
    """Why a cell surges: the smoothed demand and supply behind its multiplier."""

    demand: Decimal
    supply: Decimal
    multiplier: Decimal


def to_cell7(cell: int) -> int:
    """The res-7 cell containing ``cell`` (a valid cell of resolution 7 or finer)."""
    if cell_resolution(cell) < SURGE_RESOLUTION:
        raise ValueError(f"cell {cell:x} is coarser than resolution {SURGE_RESOLUTION}")
    return (cell & ALL_BUT_RES) | _CELL7_BITS


def count_by_cell7(cells: Iterable[int]) -> dict[int, int]:
    """Available workers per res-7 cell, from their (finer) index cells: a supply snapshot."""
    counts: dict[int, int] = {}
    for cell in cells:
        parent = to_cell7(cell)
        counts[parent] = counts.get(parent, 0) + 1
    return counts


class SurgeModel:
    """Sliding-window demand and supply per res-7 cell. Not thread-safe; one per dispatcher."""

    def __init__(self, config: SurgeConfig | None = None) -> None:
        self.config = config or SurgeConfig()
        self._demand: dict[int, _Series] = {}  # cell -> orders per bucket
        self._supply: dict[int, _Series] = {}  # cell -> sum of counts per bucket
        self._snapshots = _Series()  # supply snapshots taken per bucket
        self._latest_at: float | None = None
        self._swept_through: int | None = None
        self._buckets_per_window = math.ceil(self.config.window_s / self.config.bucket_s)

    def record_demand(self, cell7: int, at: float) -> None:
        """One order (or quote request) placed in ``cell7`` at ``at``."""
        _check_cell7(cell7)
        bucket = self._admit(at)
        if bucket is not None:
            _add(self._demand, cell7, bucket, 1)

    def observe_supply(self, available: Mapping[int, int], at: float) -> None:
        """A snapshot of available workers per res-7 cell at ``at``; absent cells had none."""
        for cell7, count in available.items():
            _check_cell7(cell7)
            if count < 0:
                raise ValueError(f"negative supply for cell {cell7:x}")
        bucket = self._admit(at)
        if bucket is None:
            return
        self._snapshots.add(bucket, 1)
        for cell7, count in available.items():
            if count:
                _add(self._supply, cell7, bucket, count)

    def multiplier(self, cell7: int, now: float) -> Decimal:
        return self.pressure(cell7, now).multiplier

    def pressure(self, cell7: int, now: float) -> SurgePressure:
        _check_cell7(cell7)
        first, last = self._window(now)
        demand = self._smoothed(self._demand, cell7, first, last)
        snapshots = self._snapshots.total(first, last)
        if snapshots == 0:
            return SurgePressure(demand, Decimal(0), _NO_SURGE)
        supply = self._smoothed(self._supply, cell7, first, last) / snapshots
        return SurgePressure(demand, supply, self._multiplier_for(demand, supply))

    def evict(self, now: float) -> int:
        """Drop every bucket that has left the window at ``now``; returns how many went."""
        first, _ = self._window(now)
        return self._evict_through(first)

    def cells(self) -> list[int]:
        """Every res-7 cell with demand or supply data still held."""
        return sorted(self._demand.keys() | self._supply.keys())

    @property
    def cells_tracked(self) -> int:
        return len(self._demand.keys() | self._supply.keys())

    @property
    def buckets_held(self) -> int:
        """Buckets in memory, over all cells: what the eviction keeps bounded."""
        held = sum(len(b) for per_cell in (self._demand, self._supply) for b in per_cell.values())
        return held + len(self._snapshots)

    def _admit(self, at: float) -> int | None:
        """The bucket of an event at ``at``, or None if it is already outside the window."""
        if not math.isfinite(at):
            raise ValueError(f"not a time: {at}")
        self._latest_at = at if self._latest_at is None else max(self._latest_at, at)
        first, _ = self._window(self._latest_at)
        bucket = math.floor(at / self.config.bucket_s)
        if bucket <= first:
            return None  # a late event that could never count again
        self._sweep_if_due(first)
        return bucket

    def _sweep_if_due(self, first: int) -> None:
        # One full sweep per window keeps memory within two windows of buckets per active cell,
        # at an amortised constant cost per event.
        if self._swept_through is None or first - self._swept_through >= self._buckets_per_window:
            self._evict_through(first)
            self._swept_through = first

    def _evict_through(self, first: int) -> int:
        dropped = self._snapshots.drop_through(first)
        for per_cell in (self._demand, self._supply):
            for cell in list(per_cell):
                dropped += per_cell[cell].drop_through(first)
                if not per_cell[cell]:
                    del per_cell[cell]
        return dropped

    def _window(self, now: float) -> tuple[int, int]:
        """Buckets ``first < b <= last`` make up the window ending at ``now``."""
        size = self.config.bucket_s
        return math.floor((now - self.config.window_s) / size), math.floor(now / size)

    def _smoothed(self, per_cell: dict[int, _Series], cell7: int, first: int, last: int) -> Decimal:
        own = _count(per_cell, cell7, first, last)
        around = sum(_count(per_cell, n, first, last) for n in _neighbours(cell7))
        return Decimal(own) + self.config.neighbour_weight * around

    def _multiplier_for(self, demand: Decimal, supply: Decimal) -> Decimal:
        pressure = demand / max(supply, self.config.min_supply)
        raw = _ONE + self.config.sensitivity * (pressure - _ONE)
        stepped = raw.quantize(_STEP, rounding=ROUND_FLOOR)
        return min(max(stepped, _NO_SURGE), self.config.cap)


def _check_cell7(cell: int) -> None:
    if not h3.is_valid_cell(cell) or h3.get_resolution(cell) != SURGE_RESOLUTION:
        raise ValueError(f"{cell!r} is not an H3 cell of resolution {SURGE_RESOLUTION}")


@functools.lru_cache(maxsize=4096)
def _neighbours(cell7: int) -> tuple[int, ...]:
    # grid_disk, unlike grid_ring, also works next to the twelve pentagons.
    return tuple(int(c) for c in h3.grid_disk(cell7, 1) if c != cell7)


def _add(per_cell: dict[int, _Series], cell: int, bucket: int, count: int) -> None:
    series = per_cell.get(cell)
    if series is None:
        series = per_cell[cell] = _Series()
    series.add(bucket, count)


def _count(per_cell: dict[int, _Series], cell: int, first: int, last: int) -> int:
    series = per_cell.get(cell)
    return 0 if series is None else series.total(first, last)


class _Series:
    """Counts per time bucket, and their sum over the window last asked for, kept current: a
    quote sums 7 cells' windows of 300 one-second buckets twice, and summing them anew cost
    the API ~4% of its CPU at 200 orders/s; a window that slid on by a few buckets now costs
    those buckets."""

    __slots__ = ("_buckets", "_first", "_last", "_total")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self._first: int | None = None  # the window (first, last] that _total sums
        self._last = 0
        self._total = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def add(self, bucket: int, count: int) -> None:
        self._buckets[bucket] = self._buckets.get(bucket, 0) + count
        if self._first is not None and self._first < bucket <= self._last:
            self._total += count

    def total(self, first: int, last: int) -> int:
        """The sum of the buckets ``first < b <= last``."""
        f, last_before, buckets = self._first, self._last, self._buckets
        if (
            f is None
            or first < f
            or last < last_before
            or (first - f) + (last - last_before) > len(buckets)
        ):
            self._total = sum(n for b, n in buckets.items() if first < b <= last)
        else:  # slid forward: add what entered, take off what left
            get = buckets.get
            entered = sum(get(b, 0) for b in range(last_before + 1, last + 1))
            left = sum(get(b, 0) for b in range(f + 1, first + 1))
            self._total += entered - left
        self._first, self._last = first, last
        return self._total

    def drop_through(self, first: int) -> int:
        """Forget the buckets ``b <= first``; returns how many went."""
        stale = [b for b in self._buckets if b <= first]
        for b in stale:
            del self._buckets[b]
        if stale:
            self._first = None  # the kept sum may include them: sum anew next time
        return len(stale)
