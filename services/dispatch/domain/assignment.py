"""Batch assignment of open orders to available workers, and the greedy baseline it replaces."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from polder.common.geoindex import LocationIndex, Nearby
from polder.dispatch.domain.assignment_solver import Pairing, Row, solve_exact
from polder.dispatch.domain.candidates import candidates, candidates_found
from polder.dispatch.domain.decisions import (
    Decision,
    Outcome,
    Solver,
    all_taken_reason,
    assigned_reason,
    considered,
    deferred_reason,
    no_candidate_reason,
)
from polder.dispatch.domain.delivery_timing import deferral_early_s
from polder.dispatch.domain.eta import GREAT_CIRCLE, EtaProvider
from polder.dispatch.domain.fairness import assignment_costs
from polder.dispatch.domain.match_types import (
    DEFAULT_CONFIG,
    Candidate,
    MatchConfig,
    OpenOrder,
    Worker,
)
from polder.dispatch.domain.nearest import WorkerTree
from polder.dispatch.domain.partitioned_solver import solve_partitioned
from polder.dispatch.domain.widening import RowSearch, widen


@dataclass(frozen=True, slots=True)
class Assignment:
    order_id: str
    driver_id: str
    distance_m: float
    eta_s: float
    cost: float


@dataclass(frozen=True, slots=True)
class BatchResult:
    """``deferred``: deliveries held back for timing; ``unmatched``: no worker this batch;
    ``decisions``: every order's, each built when first read (see ``Decisions``)."""

    assignments: list[Assignment]
    deferred: list[str]
    unmatched: list[str]
    decisions: Mapping[str, Decision]
    solver: Solver


def assign_batch(
    orders: Sequence[OpenOrder],
    workers: Mapping[str, Worker],
    index: LocationIndex,
    now: float,
    config: MatchConfig = DEFAULT_CONFIG,
    eta: EtaProvider = GREAT_CIRCLE,
) -> BatchResult:
    """Match a batch of orders to workers optimally; each worker gets at most one order.

    ``index`` holds the positions of the available workers, ``workers`` how long each has been
    waiting. Per order: candidates (see ``candidates``), then deliveries that are too early are
    deferred (see ``delivery_timing``), then one assignment over all remaining orders minimises
    the total cost with fairness folded in (see ``fairness``): exactly up to
    ``config.max_exact_orders`` orders, by H3 parts above (see ``partitioned_solver``). After
    an exact solve, orders whose k nearest may not have been enough get longer lists and the
    batch is solved again (see ``widening``); the fallback skips this to keep its time bounded.
    """
    _check_unique(orders)
    rows, search = _searched(orders, workers, index, now, config, eta)
    matchable = [r for r in rows.values() if _matchable(r, config)]
    if len(matchable) > config.max_exact_orders:
        max_rows = config.max_exact_orders
        pairing = solve_partitioned(matchable, config.partition_resolution, max_rows)
        return _result(list(rows.values()), pairing, now, config, "partitioned")
    pairing = _solve_widening(matchable, rows, search, config.widening_rounds)
    return _result(list(rows.values()), pairing, now, config, "exact")


def _searched(
    orders: Sequence[OpenOrder],
    workers: Mapping[str, Worker],
    index: LocationIndex,
    now: float,
    config: MatchConfig,
    eta: EtaProvider,
) -> tuple[dict[str, Row], RowSearch]:
    """Every order's row with its ``k_nearest`` candidates, and the search that gives an order
    a longer list (for ``widening``). From ``config.tree_from_orders`` orders on, the batch's
    workers go into a k-d tree first (see ``nearest``): the same lists, sooner."""
    if len(orders) < config.tree_from_orders:

        def search(order: OpenOrder, k: int) -> Row:
            return _row(order, workers, index, now, replace(config, k_nearest=k), eta)

        return {o.order_id: search(o, config.k_nearest) for o in orders}, search

    tree = WorkerTree.of(workers, index, now)
    radius = config.max_radius_m

    def row(order: OpenOrder, hits: Sequence[Nearby]) -> Row:
        return _row_of(order, candidates_found(order, hits, workers, now, config, eta), config)

    def search_tree(order: OpenOrder, k: int) -> Row:
        hits = tree.nearest(order.pickup_lat, order.pickup_lng, radius, k, order.excluded)
        return row(order, hits)

    queries = [(o.pickup_lat, o.pickup_lng, o.excluded) for o in orders]
    first = tree.nearest_each(queries, radius, config.k_nearest)
    return {o.order_id: row(o, hits) for o, hits in zip(orders, first, strict=True)}, search_tree


def _solve_widening(
    matchable: Sequence[Row], rows: dict[str, Row], search: RowSearch, rounds: int
) -> Pairing:
    """Exact solve; then, while some lists may be too short, longer lists and solve again.
    ``rows`` is updated with the longer lists, so the decisions show them."""
    pairing = solve_exact(matchable)
    for _ in range(rounds):
        wider = widen(matchable, pairing, search)
        if not wider:
            break
        rows.update(wider)
        matchable = [rows[r.order.order_id] for r in matchable]
        pairing = solve_exact(matchable)
    return pairing


def sequential_greedy(
    orders: Sequence[OpenOrder],
    workers: Mapping[str, Worker],
    index: LocationIndex,
    now: float,
    config: MatchConfig = DEFAULT_CONFIG,
    eta: EtaProvider = GREAT_CIRCLE,
) -> BatchResult:
    """The baseline: in order of arrival, each order takes its cheapest still-free worker.

    Same candidate search, cost and delivery deferral as ``assign_batch``; no fairness, and
    the search looks past workers taken by earlier orders.
    """
    _check_unique(orders)
    free = dict(workers)
    plain = replace(config, fairness_weight=0.0)
    rows: list[Row] = []
    pairing: Pairing = {}
    for order in sorted(orders, key=lambda o: o.created_at):
        row = _row(order, free, index, now, plain, eta)
        rows.append(row)
        if _matchable(row, plain):
            pairing[order.order_id] = row.candidates[0].driver_id
            del free[row.candidates[0].driver_id]
    return _result(rows, pairing, now, plain, "sequential_greedy")


GREEDY_REASON = "sequential greedy: cheapest free worker, orders in arrival order"


def _matchable(row: Row, config: MatchConfig) -> bool:
    return bool(row.candidates) and deferral_early_s(row.candidates, config) is None


def _check_unique(orders: Sequence[OpenOrder]) -> None:
    if len({o.order_id for o in orders}) != len(orders):
        raise ValueError("an order appears twice in the batch")


def _row(
    order: OpenOrder,
    workers: Mapping[str, Worker],
    index: LocationIndex,
    now: float,
    config: MatchConfig,
    eta: EtaProvider,
) -> Row:
    return _row_of(order, candidates(order, workers, index, now, config, eta), config)


def _row_of(order: OpenOrder, found: Sequence[Candidate], config: MatchConfig) -> Row:
    return Row(order, tuple(found), tuple(assignment_costs(found, config)))


def _result(
    rows: Sequence[Row], pairing: Pairing, now: float, config: MatchConfig, solver: Solver
) -> BatchResult:
    result = BatchResult([], [], [], Decisions(rows, pairing, now, config, solver), solver)
    for row in rows:
        order_id = row.order.order_id
        driver_id = pairing.get(order_id)
        outcome = _outcome(row, driver_id, config)
        if outcome == "assigned":
            assert driver_id is not None
            result.assignments.append(_assignment(row.order, _by_driver(row.candidates, driver_id)))
        elif outcome == "deferred":
            result.deferred.append(order_id)
        else:
            result.unmatched.append(order_id)
    return result


class Decisions(Mapping[str, Decision]):
    """The batch's decisions by order id, each built the first time it is read.

    The reasons and the candidates as the solver saw them are a fifth of a batch's solve
    (~5 ms of 24 for 300 orders), and only the decisions being written are needed: the matcher
    writes the oldest orders' offers first (see ``matcher._parts``), before it reads the rest.
    """

    __slots__ = ("_rows", "_pairing", "_assigned_to", "_now", "_config", "_solver", "_built")

    def __init__(
        self,
        rows: Sequence[Row],
        pairing: Pairing,
        now: float,
        config: MatchConfig,
        solver: Solver,
    ) -> None:
        self._rows = {row.order.order_id: row for row in rows}
        self._pairing = pairing
        self._assigned_to = {driver_id: order_id for order_id, driver_id in pairing.items()}
        self._now = now
        self._config = config
        self._solver = solver
        self._built: dict[str, Decision] = {}

    def __getitem__(self, order_id: str) -> Decision:
        decision = self._built.get(order_id)
        if decision is None:
            decision = self._built[order_id] = self._decide(self._rows[order_id])
        return decision

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def _decide(self, row: Row) -> Decision:
        order, config = row.order, self._config
        outcome, chosen, reason = _verdict(
            row, self._pairing.get(order.order_id), self._assigned_to, config
        )
        if chosen is not None and self._solver == "sequential_greedy":
            reason = GREEDY_REASON
        seen = considered(row.candidates, row.costs, config)
        return Decision(
            order.order_id, order.kind, self._now, outcome, chosen, reason, self._solver, seen
        )


def _outcome(row: Row, driver_id: str | None, config: MatchConfig) -> Outcome:
    if not row.candidates:
        return "unmatched"
    if deferral_early_s(row.candidates, config) is not None:
        return "deferred"
    return "unmatched" if driver_id is None else "assigned"


def _verdict(
    row: Row, driver_id: str | None, assigned_to: Mapping[str, str], config: MatchConfig
) -> tuple[Outcome, str | None, str]:
    order, cands = row.order, row.candidates
    outcome = _outcome(row, driver_id, config)
    if outcome == "assigned":
        assert driver_id is not None
        chosen = _by_driver(cands, driver_id)
        return outcome, driver_id, assigned_reason(order, chosen, cands, assigned_to, config)
    if not cands:
        return outcome, None, no_candidate_reason(order, config)
    if outcome == "deferred":
        too_early = deferral_early_s(cands, config)
        assert too_early is not None
        return outcome, None, deferred_reason(too_early)
    return outcome, None, all_taken_reason(len(cands))


def _by_driver(cands: Sequence[Candidate], driver_id: str) -> Candidate:
    return next(c for c in cands if c.driver_id == driver_id)


def _assignment(order: OpenOrder, c: Candidate) -> Assignment:
    return Assignment(order.order_id, c.driver_id, c.distance_m, c.eta_s, c.cost)
