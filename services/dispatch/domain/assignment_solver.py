"""The exact solve of a batch: which worker for which order, each worker at most once.

``scipy.optimize.linear_sum_assignment`` on the pruned matrix: orders x the union of their
candidates. A pair that is not a candidate gets a finite cost larger than any sum of real
costs, so the solver first serves as many orders as the candidates allow and then minimises
their total cost; such pairs are dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from polder.dispatch.domain.match_types import Candidate, OpenOrder

Pairing = dict[str, str]  # order_id -> driver_id


@dataclass(frozen=True, slots=True)
class Row:
    """One order of the batch: its candidates and what assigning each one costs the solver."""

    order: OpenOrder
    candidates: tuple[Candidate, ...]
    costs: tuple[float, ...]


def solve_exact(rows: Sequence[Row], taken: Set[str] = frozenset()) -> Pairing:
    """The assignment with the most orders served and, among those, the least total cost."""
    columns: dict[str, int] = {}
    at_row: list[int] = []
    at_column: list[int] = []
    costs: list[float] = []
    for i, row in enumerate(rows):
        for candidate, cost in zip(row.candidates, row.costs, strict=True):
            if candidate.driver_id not in taken:
                at_row.append(i)
                at_column.append(columns.setdefault(candidate.driver_id, len(columns)))
                costs.append(cost)
    if not costs:
        return {}
    # Costs are never negative, so this exceeds the total of any assignment of real pairs.
    infeasible = (max(costs) + 1.0) * (min(len(rows), len(columns)) + 1)
    matrix = np.full((len(rows), len(columns)), infeasible)
    # In one go: each pair is listed once (an order's candidates are distinct workers).
    matrix[at_row, at_column] = costs
    row_ind, col_ind = linear_sum_assignment(matrix)
    drivers = list(columns)
    return {
        rows[i].order.order_id: drivers[j]
        for i, j in zip(row_ind.tolist(), col_ind.tolist(), strict=True)
        if matrix[i, j] < infeasible
    }
