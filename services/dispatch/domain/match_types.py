"""The plain data matching works on: available workers, open orders, settings, candidates.

All times are epoch seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

OrderKind = Literal["ride", "delivery"]


@dataclass(frozen=True, slots=True)
class Worker:
    """An available worker. ``waiting_since`` is when their current unpaid wait (idle) began."""

    driver_id: str
    lat: float
    lng: float
    waiting_since: float


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """An order still looking for a worker.

    ``ready_at`` (deliveries) is when the merchant will have it ready; ``excluded`` are the
    workers who already declined it or let an offer for it expire.
    """

    order_id: str
    kind: OrderKind
    pickup_lat: float
    pickup_lng: float
    created_at: float
    ready_at: float | None = None
    excluded: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class MatchConfig:
    """How matching searches, weighs and solves.

    - Search: rings widen from ``initial_radius_m``, doubling, up to ``max_radius_m`` until
      ``k_nearest`` candidates are found; only the ``k_nearest`` are kept. Lists that the
      solve's prices show may be too short double, for up to ``widening_rounds`` re-solves
      (see ``widening``). A batch of ``tree_from_orders`` orders or more searches a k-d tree
      of its workers instead of the index's rings: the same lists, found faster when many
      orders ask (see ``nearest``); below, building the tree would cost more than it saves.
    - Fairness: candidates within ``fairness_tolerance_s`` of their order's best cost are
      near-equal; among them, ``fairness_weight`` (0..1) is how much the wait counts against
      the cost (0 disables fairness; 1: the longest wait wins). See ``fairness``.
    - Deliveries: ``early_arrival_weight`` is what one second of arriving before ``ready_at``
      costs in seconds of ETA; an order waits for a later batch while even the quickest
      candidate would arrive more than ``delivery_early_slack_s`` early. See ``delivery_timing``.
    - Solve: up to ``max_exact_orders`` one exact assignment; above, the orders are split by the
      H3 cell of their pickup at ``partition_resolution`` and each part is solved exactly
      (see ``partitioned_solver``).
    """

    max_radius_m: float = 5_000.0
    initial_radius_m: float = 1_000.0
    k_nearest: int = 8
    fairness_tolerance_s: float = 30.0
    fairness_weight: float = 1.0
    max_exact_orders: int = 400
    delivery_early_slack_s: float = 120.0
    early_arrival_weight: float = 2.0
    partition_resolution: int = 6
    widening_rounds: int = 4
    tree_from_orders: int = 32

    def __post_init__(self) -> None:
        if not 0 < self.initial_radius_m <= self.max_radius_m:
            raise ValueError("need 0 < initial_radius_m <= max_radius_m")
        if self.k_nearest < 1 or self.max_exact_orders < 1:
            raise ValueError("k_nearest and max_exact_orders must be at least 1")
        if not 0.0 <= self.fairness_weight <= 1.0:
            raise ValueError("fairness_weight must be between 0 and 1")
        if self.fairness_tolerance_s < 0 or self.delivery_early_slack_s < 0:
            raise ValueError("fairness_tolerance_s and delivery_early_slack_s cannot be negative")
        if not 0 <= self.early_arrival_weight < math.inf:  # NaN fails too
            raise ValueError("early_arrival_weight must be finite and not negative")
        if self.tree_from_orders < 1:
            raise ValueError("tree_from_orders must be at least 1")
        if self.widening_rounds < 0:
            raise ValueError("widening_rounds cannot be negative")
        if not 0 <= self.partition_resolution <= 15:
            raise ValueError("partition_resolution must be an H3 resolution (0..15)")


DEFAULT_CONFIG = MatchConfig()


class Candidate(NamedTuple):
    """A worker who could take an order, and what it would cost.

    ``distance_m`` and ``eta_s`` are the pickup leg from the ETA provider; ``waiting_s`` is how
    long the worker has been waiting unpaid; ``early_s`` is how long they would wait for a
    delivery to be ready; ``cost`` is what the assignment minimises (before fairness).

    A named tuple, not a frozen dataclass: a batch builds thousands (every order's k nearest,
    again for longer lists), and a frozen dataclass's ``__init__`` took 1.8 µs where a tuple
    takes 0.5: ~3 ms of a 250-order batch's solve (`loadtests.solve_time`).
    """

    driver_id: str
    distance_m: float
    eta_s: float
    waiting_s: float
    cost: float
    early_s: float = 0.0
