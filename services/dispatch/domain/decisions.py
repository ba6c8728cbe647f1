"""Why an order got the worker it got: every candidate considered, the choice and its reason.

Operators query these (``GET /v1/orders/{order_id}/decisions``), so a decision turns into plain
JSON with ``to_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from polder.dispatch.domain.fairness import is_near_best
from polder.dispatch.domain.match_types import Candidate, MatchConfig, OpenOrder, OrderKind

Outcome = Literal["assigned", "deferred", "unmatched"]
Solver = Literal["exact", "partitioned", "sequential_greedy"]


# Decimals kept of a candidate's figures in a stored decision (metres, seconds, costs).
FIGURE_DECIMALS = 3


class Considered(NamedTuple):
    """A candidate as the solver saw it: ``assignment_cost`` includes fairness. (A named tuple,
    as ``Candidate`` is: one is built for each candidate of every order of every batch.)"""

    candidate: Candidate
    assignment_cost: float
    near_best: bool

    def to_dict(self) -> dict[str, object]:
        """Figures to the millimetre and millisecond (``FIGURE_DECIMALS``): with every digit of
        a float, a decision of eight candidates was ~1.9-2.3 KB, at or over the size where
        Postgres compresses a row's value (pglz), in the statement that writes a batch's offers;
        rounded it is ~1.4 KB, stored as it is."""
        c = self.candidate
        return {
            "driver_id": c.driver_id,
            "distance_m": round(c.distance_m, FIGURE_DECIMALS),
            "eta_s": round(c.eta_s, FIGURE_DECIMALS),
            "waiting_s": round(c.waiting_s, FIGURE_DECIMALS),
            "early_s": round(c.early_s, FIGURE_DECIMALS),
            "cost": round(c.cost, FIGURE_DECIMALS),
            "assignment_cost": round(self.assignment_cost, FIGURE_DECIMALS),
            "near_best": self.near_best,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    order_id: str
    kind: OrderKind
    decided_at: float
    outcome: Outcome
    chosen_driver_id: str | None
    reason: str
    solver: Solver
    candidates: tuple[Considered, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "order_id": self.order_id,
            "kind": self.kind,
            "decided_at": self.decided_at,
            "outcome": self.outcome,
            "chosen_driver_id": self.chosen_driver_id,
            "reason": self.reason,
            "solver": self.solver,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def considered(
    candidates: Sequence[Candidate], costs: Sequence[float], config: MatchConfig
) -> tuple[Considered, ...]:
    best = min((c.cost for c in candidates), default=0.0)
    return tuple(
        Considered(c, cost, is_near_best(c, best, config))
        for c, cost in zip(candidates, costs, strict=True)
    )


def no_candidate_reason(order: OpenOrder, config: MatchConfig) -> str:
    reason = f"no available worker within {config.max_radius_m:g} m"
    if order.excluded:
        reason += f" (besides {len(order.excluded)} who declined or let the offer expire)"
    return reason


def deferred_reason(early_s: float) -> str:
    return f"deferred: would arrive {early_s:.0f} s before food ready"


def all_taken_reason(count: int) -> str:
    noun = "candidate" if count == 1 else f"all {count} candidates"
    return f"{noun} taken by other orders in the batch"


def assigned_reason(
    order: OpenOrder,
    chosen: Candidate,
    candidates: Sequence[Candidate],
    assigned_to: Mapping[str, str],
    config: MatchConfig,
) -> str:
    """Why ``chosen`` and not the cheapest candidate; ``assigned_to`` maps driver -> order."""
    choice = _choice_reason(order, chosen, candidates, assigned_to, config)
    return choice + _timing_note(order, chosen)


def _choice_reason(
    order: OpenOrder,
    chosen: Candidate,
    candidates: Sequence[Candidate],
    assigned_to: Mapping[str, str],
    config: MatchConfig,
) -> str:
    best = min(candidates, key=lambda c: (c.cost, c.distance_m, c.driver_id))
    other_order = assigned_to.get(best.driver_id)
    if chosen.cost > best.cost and other_order not in (None, order.order_id):
        return (
            f"best candidate taken by another order in the batch "
            f"({best.driver_id} went to {other_order})"
        )
    if chosen.cost > best.cost and _fairness_moved(chosen, best, config):
        return _fairness_reason(chosen, best, candidates, config)
    return "optimal batch assignment: lowest total pickup ETA"


def _fairness_moved(chosen: Candidate, best: Candidate, config: MatchConfig) -> bool:
    near = is_near_best(chosen, best.cost, config)
    return config.fairness_weight > 0.0 and near and chosen.waiting_s > best.waiting_s


def _fairness_reason(
    chosen: Candidate, best: Candidate, candidates: Sequence[Candidate], config: MatchConfig
) -> str:
    near = [c for c in candidates if is_near_best(c, best.cost, config)]
    waits = f"{chosen.waiting_s:.0f} s vs {best.waiting_s:.0f} s for the best"
    tol = f"{config.fairness_tolerance_s:g}"
    if chosen.waiting_s >= max(c.waiting_s for c in near):
        return f"fairness: within {tol} s of best, waited longest ({waits})"
    return f"fairness: within {tol} s of best, waited longer ({waits})"


def _timing_note(order: OpenOrder, chosen: Candidate) -> str:
    if order.kind != "delivery" or order.ready_at is None:
        return ""
    if chosen.early_s > 0:
        return f"; arrives {chosen.early_s:.0f} s before food ready"
    return "; food ready on arrival"
