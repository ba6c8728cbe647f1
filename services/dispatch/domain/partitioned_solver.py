"""The fallback for batches above ``max_exact_orders``: exact solves of H3 parts.

1. Parts. Orders are grouped by the H3 cell of their pickup at ``partition_resolution``
   (res 6, about 36 km²: a city makes a few parts); neighbouring small cells are packed
   together up to ``max_exact_orders`` orders, and a cell with more is split one resolution
   finer. The parts are solved exactly one after another, each around the workers earlier
   parts took. Each solve stays small, so the time grows with the batch, not its square.
2. Borders. What is lost sits mostly at the borders, with orders that share a candidate with
   another part. Those orders are solved again, exactly, in windows of ``max_exact_orders``:
   bands of latitude, then of longitude, whose edges cross the hexagonal part borders
   instead of running along them. A window keeps the workers it holds available to itself,
   so no window makes the result worse.

Candidate lists are not widened here (see ``widening``): the fallback is for bounded time.
How close it comes to the exact solve is measured by ``loadtests/matching_quality.py``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence

import h3.api.basic_int as h3

from polder.dispatch.domain.assignment_solver import Pairing, Row, solve_exact

_FINEST_RESOLUTION = 15


def solve_partitioned(rows: Sequence[Row], resolution: int, max_rows: int) -> Pairing:
    """Exact per H3 part of at most ``max_rows`` orders, then the part borders again."""
    pairing: Pairing = {}
    part_of: dict[str, int] = {}
    for number, part in enumerate(partition(rows, resolution, max_rows)):
        pairing.update(solve_exact(part, frozenset(pairing.values())))
        part_of.update((row.order.order_id, number) for row in part)
    border = _border_rows(rows, part_of)
    for window in [*_bands(border, _latitude, max_rows), *_bands(border, _longitude, max_rows)]:
        pairing = _resolve(window, pairing)
    return pairing


def _latitude(row: Row) -> float:
    return row.order.pickup_lat


def _longitude(row: Row) -> float:
    return row.order.pickup_lng


def _bands(rows: Sequence[Row], key: Callable[[Row], float], size: int) -> list[list[Row]]:
    ordered = sorted(rows, key=key)
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def _border_rows(rows: Sequence[Row], part_of: Mapping[str, int]) -> list[Row]:
    """Rows with a candidate that rows of another part also had."""
    parts_of_driver: defaultdict[str, set[int]] = defaultdict(set)
    for row in rows:
        for candidate in row.candidates:
            parts_of_driver[candidate.driver_id].add(part_of[row.order.order_id])
    return [
        row for row in rows if any(len(parts_of_driver[c.driver_id]) > 1 for c in row.candidates)
    ]


def _resolve(rows: Sequence[Row], pairing: Pairing) -> Pairing:
    """Solve ``rows`` again, exactly, around the workers other orders hold.

    Their current workers are still free to them, so the result is never worse: at least as
    many orders served, and at no more total cost when as many.
    """
    ids = {row.order.order_id for row in rows}
    kept = {order_id: driver for order_id, driver in pairing.items() if order_id not in ids}
    return kept | solve_exact(rows, frozenset(kept.values()))


def partition(rows: Sequence[Row], resolution: int, max_rows: int) -> Iterator[list[Row]]:
    """Rows grouped by the pickup's H3 cell, no part above ``max_rows``.

    Neighbouring small cells are packed into one part (H3 ids of one parent sort together), so
    there are as few part borders, where quality is lost, as the size limit allows.
    """
    if len(rows) <= max_rows:
        yield list(rows)
        return
    if resolution > _FINEST_RESOLUTION:  # hundreds of pickups within metres: cut in chunks
        for start in range(0, len(rows), max_rows):
            yield list(rows[start : start + max_rows])
        return
    pack: list[Row] = []
    for cell_rows in _by_cell(rows, resolution):
        if len(cell_rows) > max_rows:
            yield from partition(cell_rows, resolution + 1, max_rows)
            continue
        if len(pack) + len(cell_rows) > max_rows:
            yield pack
            pack = []
        pack.extend(cell_rows)
    if pack:
        yield pack


def _by_cell(rows: Sequence[Row], resolution: int) -> list[list[Row]]:
    groups: defaultdict[int, list[Row]] = defaultdict(list)
    for row in rows:
        cell = h3.latlng_to_cell(row.order.pickup_lat, row.order.pickup_lng, resolution)
        groups[cell].append(row)
    return [groups[cell] for cell in sorted(groups)]
