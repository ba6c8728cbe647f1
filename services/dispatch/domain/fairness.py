"""Fairness: among near-equal candidates, the worker who has waited longest unpaid goes first.

It works inside the cost the batch solver minimises, so the batch stays optimal for that cost.
For one order with best cost ``best``, tolerance ``tol`` and weight ``w``:

- A candidate is *near-equal* when ``cost <= best + tol``. Its assignment cost becomes
  ``best + (1 - w) * gap + w * lag``, where ``gap = cost - best`` and
  ``lag = min(tol, longest - waiting)``, ``longest`` being the longest wait among the
  near-equal candidates. Both lie in ``[0, tol]``.
- Any other candidate keeps its cost.

So ``w = 0`` is plain cost; ``w = 1`` ranks near-equal candidates by how much shorter they
waited than the longest waiter, who wins; ``w = 0.5`` trades a second of ETA for a second of
wait. Waits that differ by more than ``tol`` count as ``tol``, so one very long wait cannot
outweigh everything else in the batch.

Guarantees: near-equal candidates' assignment costs stay within ``[best, best + tol]``, below
every candidate outside the tolerance, so for an order on its own fairness never picks a
candidate outside it. No assignment cost moves by more than ``w * tol``, so in a batch
fairness adds at most ``2 * w * tol`` per order to the total cost of the optimum.
"""

from __future__ import annotations

from collections.abc import Sequence

from polder.dispatch.domain.match_types import Candidate, MatchConfig

# A sliver of the cost gap always counts, so equal waits still go to the cheaper candidate.
_TIE_BREAK = 1e-6


def near_bound(best: float, config: MatchConfig) -> float:
    """The highest cost still near-equal to the best one."""
    return best + config.fairness_tolerance_s


def is_near_best(candidate: Candidate, best: float, config: MatchConfig) -> bool:
    return candidate.cost <= near_bound(best, config)


def assignment_costs(candidates: Sequence[Candidate], config: MatchConfig) -> list[float]:
    """What the solver minimises for each candidate of one order, fairness included."""
    costs = [c.cost for c in candidates]
    if not candidates or config.fairness_weight == 0.0:
        return costs
    best = min(costs)
    bound = near_bound(best, config)  # as is_near_best, read once
    longest = max(c.waiting_s for c in candidates if c.cost <= bound)
    return [_fair_cost(c, best, longest, config) if c.cost <= bound else c.cost for c in candidates]


def _fair_cost(candidate: Candidate, best: float, longest: float, config: MatchConfig) -> float:
    tol, weight = config.fairness_tolerance_s, config.fairness_weight
    gap = candidate.cost - best
    lag = min(tol, longest - candidate.waiting_s)
    ranked_by_wait = (1.0 - _TIE_BREAK) * lag + _TIE_BREAK * gap
    return best + (1.0 - weight) * gap + weight * ranked_by_wait
