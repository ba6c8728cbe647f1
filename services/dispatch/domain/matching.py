"""Matching open orders to available workers (DESIGN.md §6), as one import for the service.

The pieces, each in its own module:

- ``candidates``: H3 rings around the pickup, widening to a maximum radius, k nearest kept;
- ``eta``: the pickup leg behind an ``EtaProvider`` (default: great circle x road factor);
- ``delivery_timing``: deliveries cost their early arrival and wait while it is too early;
- ``fairness``: among near-equal costs the longest-waiting worker is preferred;
- ``assignment_solver``: the exact batch solve, and the partitioned one for large batches;
- ``assignment``: ``assign_batch`` and the ``sequential_greedy`` baseline;
- ``decisions``: the explanation recorded for every order of every batch.
"""

from polder.dispatch.domain.assignment import (
    Assignment,
    BatchResult,
    assign_batch,
    sequential_greedy,
)
from polder.dispatch.domain.candidates import candidates, candidates_found, search_radii
from polder.dispatch.domain.decisions import Considered, Decision, Outcome, Solver
from polder.dispatch.domain.delivery_timing import deferral_early_s, early_arrival_s, pickup_cost
from polder.dispatch.domain.eta import GREAT_CIRCLE, EtaProvider, GreatCircleEta, Leg
from polder.dispatch.domain.fairness import assignment_costs
from polder.dispatch.domain.match_types import (
    DEFAULT_CONFIG,
    Candidate,
    MatchConfig,
    OpenOrder,
    OrderKind,
    Worker,
)

__all__ = [
    "DEFAULT_CONFIG",
    "GREAT_CIRCLE",
    "Assignment",
    "BatchResult",
    "Candidate",
    "Considered",
    "Decision",
    "EtaProvider",
    "GreatCircleEta",
    "Leg",
    "MatchConfig",
    "OpenOrder",
    "OrderKind",
    "Outcome",
    "Solver",
    "Worker",
    "assign_batch",
    "assignment_costs",
    "candidates",
    "candidates_found",
    "deferral_early_s",
    "early_arrival_s",
    "pickup_cost",
    "search_radii",
    "sequential_greedy",
]
