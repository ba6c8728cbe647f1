"""Longer candidate lists where the k nearest were not enough, found from the solve's prices.

Pruning each order to its k nearest workers keeps the solve small, but where orders outnumber
the workers near them (a station at night, supply 1.2:1) the optimum of the whole batch gives
some orders a worker from further away, past nearer ones that other orders need more. A list
of k cannot say so, and the batch comes out a few per cent worse than the optimum.

Linear-programming duality tells which lists may be too short. An optimal assignment has
prices: ``v_j <= 0`` for each worker (0 for a worker nobody got) and ``u_i = c(i, own) - v_own``
for each order, with ``c(i, j) >= u_i + v_j`` for every pair on the lists. A pair left off the
lists can only improve the batch if ``c(i, j) < u_i + v_j <= u_i``; when costs grow with
distance (a ride's pickup ETA), every worker left off order i's list costs at least its
costliest listed candidate. So an order whose ``u_i`` is at most that cost cannot gain from a
longer list, and when no order can, the assignment is optimal over every worker within the
search radius, not just the listed ones. Orders that may gain, and orders left unmatched, get
twice as many candidates and the batch is solved again, for at most ``widening_rounds``
rounds. Only pairs are added, so a round never serves fewer orders nor costs the solver more.

The prices are shortest-path distances: for order i holding worker a, taking its candidate j
instead costs ``c(i, j) - c(i, a)``, so ``v_j <= v_a + c(i, j) - c(i, a)``. With delivery
timing or fairness the cost does not grow strictly with distance; the test is then a good
guide rather than a proof.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence

from polder.dispatch.domain.assignment_solver import Row
from polder.dispatch.domain.match_types import OpenOrder

RowSearch = Callable[[OpenOrder, int], Row]  # an order's row with its k nearest candidates

_SLACK = 1e-9  # cost differences below this are rounding, not a gain


def widen(rows: Sequence[Row], pairing: Mapping[str, str], search: RowSearch) -> dict[str, Row]:
    """Rows that may gain from a longer list, with twice the candidates; only rows that grew
    (an order whose search radius is exhausted keeps its list)."""
    wider: dict[str, Row] = {}
    for row in rows_that_may_gain(rows, pairing):
        grown = search(row.order, 2 * len(row.candidates))
        if len(grown.candidates) > len(row.candidates):
            wider[row.order.order_id] = grown
    return wider


def rows_that_may_gain(rows: Sequence[Row], pairing: Mapping[str, str]) -> list[Row]:
    prices = worker_prices(rows, pairing)
    return [row for row in rows if row.candidates and _may_gain(row, pairing, prices)]


def _may_gain(row: Row, pairing: Mapping[str, str], prices: Mapping[str, float]) -> bool:
    held = pairing.get(row.order.order_id)
    if held is None:
        return True
    own_cost = _costs(row)[held]
    return own_cost - prices.get(held, 0.0) > max(row.costs) + _SLACK


def worker_prices(rows: Sequence[Row], pairing: Mapping[str, str]) -> dict[str, float]:
    """The dual price ``v_j <= 0`` of every listed worker, by Bellman-Ford from 0 everywhere."""
    swaps = _swaps(rows, pairing)
    prices = {c.driver_id: 0.0 for row in rows for c in row.candidates}
    queue, queued = deque(swaps), set(swaps)
    # An optimal assignment has no negative cycle, so this ends; the cap guards the rest.
    budget = (len(prices) + 1) * (sum(len(edges) for edges in swaps.values()) + 1)
    while queue and budget > 0:
        held = queue.popleft()
        queued.discard(held)
        for other, extra in swaps[held]:
            budget -= 1
            if prices[held] + extra < prices[other] - _SLACK:
                prices[other] = prices[held] + extra
                if other in swaps and other not in queued:
                    queue.append(other)
                    queued.add(other)
    return prices


def _swaps(rows: Sequence[Row], pairing: Mapping[str, str]) -> dict[str, list[tuple[str, float]]]:
    """For each held worker: the other candidates of its order and what switching costs."""
    swaps: dict[str, list[tuple[str, float]]] = {}
    for row in rows:
        held = pairing.get(row.order.order_id)
        if held is not None:
            costs = _costs(row)
            swaps[held] = [(j, c - costs[held]) for j, c in costs.items() if j != held]
    return swaps


def _costs(row: Row) -> dict[str, float]:
    return {c.driver_id: cost for c, cost in zip(row.candidates, row.costs, strict=True)}
