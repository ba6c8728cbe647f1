"""Deliveries: the courier should arrive when the food is ready, not wait for it.

A courier who arrives before ``ready_at`` waits at the merchant, mostly unpaid (DESIGN.md §4).
Two rules keep that wait short:

1. Cost. A candidate costs its pickup ETA plus ``early_arrival_weight`` x the seconds it would
   arrive before ``ready_at``. With the default weight 2 an early second counts twice: once as
   time the courier is tied to the order, once because it is unpaid. So among couriers who
   would all be early the one arriving closest to ``ready_at`` is preferred, and among those
   arriving on time or later, the quickest.
2. Deferral. While even the quickest candidate would arrive more than
   ``delivery_early_slack_s`` before ``ready_at``, the order gets no offer in this batch (the
   decision says why) and is considered again in the next ones. Every other candidate is
   farther away, so offering now would trade the wait for extra driving; deferring keeps the
   near couriers free for other orders meanwhile. Once the order is offered, no candidate of it
   arrives more than the slack early, since none is quicker than the quickest.

Rides, and deliveries without ``ready_at`` or already ready, cost their pickup ETA.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from polder.dispatch.domain.match_types import Candidate, MatchConfig, OpenOrder


def early_arrival_s(order: OpenOrder, eta_s: float, now: float) -> float:
    """Seconds the worker would wait at pickup for the order to be ready (0 if not early)."""
    if order.kind != "delivery" or order.ready_at is None:
        return 0.0
    return max(0.0, order.ready_at - (now + eta_s))


def pickup_cost(eta_s: float, early_s: float, config: MatchConfig) -> float:
    return eta_s + config.early_arrival_weight * early_s


# (eta_s, driver_id): the quickest, ties by id (a C-level key: every row of a batch asks, twice)
_QUICKEST = operator.itemgetter(2, 0)


def deferral_early_s(candidates: Sequence[Candidate], config: MatchConfig) -> float | None:
    """How early the quickest candidate would arrive, if that is too early to offer now."""
    if not candidates:
        return None
    quickest = min(candidates, key=_QUICKEST)
    if quickest.early_s > config.delivery_early_slack_s:
        return quickest.early_s
    return None
