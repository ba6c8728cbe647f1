"""Batch assignment: optimality, the large-batch fallback, fairness, delivery timing and the
recorded decisions. Pure: a small index and plain data, no I/O."""

import itertools
import json
import math
import random
from collections.abc import Iterable, Sequence

import pytest

from polder.common.geoindex import LocationIndex
from polder.dispatch.domain.assignment_solver import Row
from polder.dispatch.domain.candidates import _candidate, candidates_found
from polder.dispatch.domain.eta import GREAT_CIRCLE, GreatCircleEta, Leg
from polder.dispatch.domain.matching import (
    BatchResult,
    Candidate,
    MatchConfig,
    OpenOrder,
    Worker,
    assign_batch,
    assignment_costs,
    candidates,
    sequential_greedy,
)
from polder.dispatch.domain.partitioned_solver import partition
from polder.dispatch.domain.widening import rows_that_may_gain, worker_prices

CENTRE = (52.37, 4.89)
NOW = 1_000_000.0
M_PER_DEG_LAT = 111_320.0
PLAIN = MatchConfig(fairness_weight=0.0)
World = tuple[dict[str, Worker], LocationIndex]


def at(north_m: float, east_m: float = 0.0) -> tuple[float, float]:
    lat = CENTRE[0] + north_m / M_PER_DEG_LAT
    return lat, CENTRE[1] + east_m / (M_PER_DEG_LAT * math.cos(math.radians(CENTRE[0])))


def worker(driver_id: str, north_m: float, east_m: float = 0.0, waited_s: float = 0.0) -> Worker:
    return Worker(driver_id, *at(north_m, east_m), waiting_since=NOW - waited_s)


def ride(
    order_id: str, north_m: float = 0.0, east_m: float = 0.0, created_at: float = NOW
) -> OpenOrder:
    return OpenOrder(order_id, "ride", *at(north_m, east_m), created_at=created_at)


def delivery(order_id: str, ready_in_s: float, north_m: float = 0.0) -> OpenOrder:
    return OpenOrder(order_id, "delivery", *at(north_m), created_at=NOW, ready_at=NOW + ready_in_s)


def world(workers: Iterable[Worker]) -> World:
    index = LocationIndex(resolution=9, ttl_s=1e9)
    listed = {w.driver_id: w for w in workers}
    for w in listed.values():
        index.upsert(w.driver_id, w.lat, w.lng, recorded_at=NOW - 1, seen_at=NOW)
    return listed, index


def random_world(
    rng: random.Random, orders: int, workers: int, half_side_m: float, max_wait_s: float = 0.0
) -> tuple[list[OpenOrder], World]:
    def spot() -> tuple[float, float]:
        return rng.uniform(-half_side_m, half_side_m), rng.uniform(-half_side_m, half_side_m)

    open_orders = [ride(f"o{i}", *spot()) for i in range(orders)]
    waits = [rng.uniform(0, max_wait_s) for _ in range(workers)]
    return open_orders, world(worker(f"w{i}", *spot(), waited_s=w) for i, w in enumerate(waits))


def pairs(result: BatchResult) -> dict[str, str]:
    return {a.order_id: a.driver_id for a in result.assignments}


def total_eta(result: BatchResult) -> float:
    return sum(a.eta_s for a in result.assignments)


def assert_consistent(result: BatchResult) -> None:
    """Every assignment is one of its order's candidates, and no worker is used twice."""
    drivers = [a.driver_id for a in result.assignments]
    assert len(drivers) == len(set(drivers))
    for a in result.assignments:
        decision = result.decisions[a.order_id]
        assert decision.chosen_driver_id == a.driver_id
        assert a.driver_id in {c.candidate.driver_id for c in decision.candidates}


# --- empty inputs ---------------------------------------------------------------------------


def test_an_empty_batch_assigns_nothing() -> None:
    workers, index = world([worker("w1", 100.0)])
    result = assign_batch([], workers, index, NOW)
    assert (result.assignments, result.deferred, result.unmatched, result.decisions) == (
        [],
        [],
        [],
        {},
    )
    assert sequential_greedy([], workers, index, NOW).assignments == []


def test_without_workers_every_order_is_unmatched_and_says_why() -> None:
    workers, index = world([])
    result = assign_batch([ride("o1"), ride("o2", 500.0)], workers, index, NOW)
    assert result.assignments == []
    assert result.unmatched == ["o1", "o2"]
    assert result.decisions["o1"].reason == "no available worker within 5000 m"
    assert result.decisions["o1"].candidates == ()


def test_an_order_appearing_twice_is_refused() -> None:
    workers, index = world([worker("w1", 100.0)])
    with pytest.raises(ValueError):
        assign_batch([ride("o1"), ride("o1")], workers, index, NOW)


# --- optimality -----------------------------------------------------------------------------


def crossing_case() -> tuple[list[OpenOrder], World]:
    """Greedy gives A its nearest worker, the only one near B; the optimum crosses over.

    A at 0, B at +1000 m east; w-near at +400 m, w-west at -700 m. Greedy: A-near (400) then
    B-west (1700) = 2100 m. Optimum: A-west (700) + B-near (600) = 1300 m.
    """
    orders = [ride("a", created_at=NOW - 2), ride("b", east_m=1_000.0, created_at=NOW - 1)]
    return orders, world([worker("w-near", 0.0, 400.0), worker("w-west", 0.0, -700.0)])


def test_the_batch_optimum_beats_greedy_where_greedy_goes_wrong() -> None:
    orders, (workers, index) = crossing_case()
    greedy = sequential_greedy(orders, workers, index, NOW, PLAIN)
    batch = assign_batch(orders, workers, index, NOW, PLAIN)
    assert pairs(greedy) == {"a": "w-near", "b": "w-west"}
    assert pairs(batch) == {"a": "w-west", "b": "w-near"}
    assert total_eta(batch) == pytest.approx(total_eta(greedy) * 1_300 / 2_100, rel=0.01)
    assert greedy.solver == "sequential_greedy" and batch.solver == "exact"


def brute_force_min(costs: Sequence[Sequence[float]]) -> float:
    """Least total over every way to give min(orders, workers) orders distinct workers."""
    n, m = len(costs), len(costs[0])
    if n <= m:
        ways = itertools.permutations(range(m), n)
        return min(sum(costs[i][w[i]] for i in range(n)) for w in ways)
    ways = itertools.permutations(range(n), m)
    return min(sum(costs[w[j]][j] for j in range(m)) for w in ways)


def cost_matrix(
    orders: Sequence[OpenOrder], workers: World, config: MatchConfig
) -> tuple[list[list[float]], list[str]]:
    listed, index = workers
    ids = sorted(listed)
    matrix = []
    for order in orders:
        found = candidates(order, listed, index, NOW, config)
        costs = assignment_costs(found, config)
        by_id = {c.driver_id: cost for c, cost in zip(found, costs, strict=True)}
        matrix.append([by_id[i] for i in ids])  # the box is small: everyone is a candidate
    return matrix, ids


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("fairness_weight", [0.0, 1.0])
def test_the_batch_agrees_with_brute_force_on_small_cases(
    seed: int, fairness_weight: float
) -> None:
    rng = random.Random(seed)
    config = MatchConfig(k_nearest=10, fairness_weight=fairness_weight)
    orders, (workers, index) = random_world(
        rng, rng.randint(1, 5), rng.randint(1, 6), 1_500.0, max_wait_s=600.0
    )
    matrix, ids = cost_matrix(orders, (workers, index), config)
    result = assign_batch(orders, workers, index, NOW, config)
    row = {o.order_id: i for i, o in enumerate(orders)}
    achieved = sum(matrix[row[a.order_id]][ids.index(a.driver_id)] for a in result.assignments)
    assert len(result.assignments) == min(len(orders), len(workers))
    assert achieved == pytest.approx(brute_force_min(matrix))
    assert_consistent(result)


def test_no_worker_gets_two_orders_and_every_order_is_accounted_for() -> None:
    orders, (workers, index) = random_world(random.Random(3), 80, 60, 3_000.0, max_wait_s=900)
    result = assign_batch(orders, workers, index, NOW)
    assert_consistent(result)
    assert len(result.assignments) + len(result.unmatched) + len(result.deferred) == 80
    assert set(result.decisions) == {o.order_id for o in orders}


def test_decisions_are_built_when_read_and_kept() -> None:
    # The matcher reads the oldest orders' decisions first and the rest after their offers are
    # out: each is built on first read, in the batch's order, and the same object thereafter.
    orders, (workers, index) = random_world(random.Random(5), 30, 20, 3_000.0, max_wait_s=900)
    result = assign_batch(orders, workers, index, NOW)
    assert list(result.decisions) == [o.order_id for o in orders]
    assert len(result.decisions) == len(orders)
    first = result.decisions[orders[0].order_id]
    assert result.decisions[orders[0].order_id] is first
    assert first.order_id == orders[0].order_id
    with pytest.raises(KeyError):
        result.decisions["not-in-this-batch"]
    outcomes = {o: d.outcome for o, d in result.decisions.items()}
    assert {o for o, outcome in outcomes.items() if outcome == "assigned"} == {
        a.order_id for a in result.assignments
    }
    assert [o for o, outcome in outcomes.items() if outcome == "unmatched"] == result.unmatched


def test_more_orders_than_workers_leaves_the_rest_unmatched_with_a_reason() -> None:
    workers, index = world([worker("w1", 100.0)])
    result = assign_batch([ride("o1"), ride("o2", 500.0)], workers, index, NOW)
    assert pairs(result) == {"o1": "w1"}
    assert result.unmatched == ["o2"]
    assert result.decisions["o2"].reason == "candidate taken by other orders in the batch"


def test_an_order_whose_only_worker_declined_has_no_candidate() -> None:
    workers, index = world([worker("w1", 100.0)])
    order = OpenOrder("o1", "ride", *at(0.0), created_at=NOW, excluded=frozenset({"w1"}))
    result = assign_batch([order], workers, index, NOW)
    assert result.unmatched == ["o1"]
    assert result.decisions["o1"].reason == (
        "no available worker within 5000 m (besides 1 who declined or let the offer expire)"
    )


def test_sequential_greedy_serves_orders_in_arrival_order() -> None:
    workers, index = world([worker("w1", 0.0, 500.0)])
    late, early = ride("late", created_at=NOW - 1), ride("early", created_at=NOW - 9)
    result = sequential_greedy([late, early], workers, index, NOW)
    assert pairs(result) == {"early": "w1"}
    assert result.decisions["early"].reason.startswith("sequential greedy")
    assert result.decisions["late"].reason == "no available worker within 5000 m"


# --- widening the candidate lists -----------------------------------------------------------


def test_a_list_too_short_for_the_optimum_is_widened() -> None:
    # With k=1 both orders list only w-near: one goes unmatched until the lists grow.
    orders, (workers, index) = crossing_case()
    pruned = assign_batch(orders, workers, index, NOW, MatchConfig(k_nearest=1, widening_rounds=0))
    assert len(pruned.assignments) == 1
    widened = assign_batch(orders, workers, index, NOW, MatchConfig(k_nearest=1))
    assert pairs(widened) == {"a": "w-west", "b": "w-near"}
    assert all(len(d.candidates) == 2 for d in widened.decisions.values())


def test_prices_show_which_order_could_gain_from_a_longer_list() -> None:
    # a lists w-near only, b lists both and holds w-west: b would give up 172 s to get
    # w-near, so a (holding it for 63 s) is worth up to 235 s and may gain from more workers.
    orders, (workers, index) = crossing_case()
    a = Row(orders[0], *_listed(orders[0], workers, index, 1))
    b = Row(orders[1], *_listed(orders[1], workers, index, 2))
    pairing = {"a": "w-near", "b": "w-west"}
    prices = worker_prices([a, b], pairing)
    assert prices["w-west"] == 0.0
    assert prices["w-near"] == pytest.approx(b.costs[0] - b.costs[1])
    assert rows_that_may_gain([a, b], pairing) == [a]
    assert rows_that_may_gain([a, b], {"b": "w-near"}) == [a]  # unmatched


def _listed(
    order: OpenOrder, workers: dict[str, Worker], index: LocationIndex, k: int
) -> tuple[tuple[Candidate, ...], tuple[float, ...]]:
    found = candidates(order, workers, index, NOW, MatchConfig(k_nearest=k, fairness_weight=0))
    return tuple(found), tuple(c.cost for c in found)


@pytest.mark.parametrize("seed", range(12))
def test_widening_reaches_the_optimum_over_every_worker(seed: int) -> None:
    rng = random.Random(seed)
    orders, (workers, index) = random_world(rng, 25, rng.randint(20, 35), 2_000.0)
    everyone = MatchConfig(k_nearest=len(workers), fairness_weight=0.0, widening_rounds=0)
    optimum = assign_batch(orders, workers, index, NOW, everyone)
    short_lists = MatchConfig(k_nearest=2, fairness_weight=0.0, widening_rounds=8)
    widened = assign_batch(orders, workers, index, NOW, short_lists)
    assert len(widened.assignments) == len(optimum.assignments)
    assert total_eta(widened) == pytest.approx(total_eta(optimum), rel=1e-9)


# --- the fallback for large batches ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_the_partitioned_fallback_is_feasible_and_close_to_exact(seed: int) -> None:
    orders, (workers, index) = random_world(random.Random(seed), 300, 360, 5_000.0)
    exact = assign_batch(orders, workers, index, NOW, PLAIN)
    small_parts = MatchConfig(fairness_weight=0.0, max_exact_orders=100)
    fallback = assign_batch(orders, workers, index, NOW, small_parts)
    assert (exact.solver, fallback.solver) == ("exact", "partitioned")
    assert_consistent(fallback)
    assert len(fallback.assignments) >= 0.99 * len(exact.assignments)
    per_order = total_eta(fallback) / len(fallback.assignments)
    assert per_order <= 1.03 * total_eta(exact) / len(exact.assignments)


def test_the_fallback_splits_dense_cells_until_parts_are_small() -> None:
    # Everything within metres: no H3 resolution separates them, so the parts are chunks.
    orders = [ride(f"o{i}", north_m=i * 0.01) for i in range(10)]
    workers, index = world(worker(f"w{i}", 50.0 + i) for i in range(8))
    result = assign_batch(orders, workers, index, NOW, MatchConfig(max_exact_orders=3))
    assert result.solver == "partitioned"
    assert_consistent(result)
    assert len(result.assignments) == 8


def test_partition_covers_every_row_once_in_parts_no_larger_than_asked() -> None:
    rng = random.Random(5)
    rows = [
        Row(ride(f"o{i}", rng.uniform(-8e3, 8e3), rng.uniform(-8e3, 8e3)), (), ())
        for i in range(300)
    ]
    parts = list(partition(rows, resolution=6, max_rows=40))
    assert all(len(p) <= 40 for p in parts)
    placed = sorted(r.order.order_id for p in parts for r in p)
    assert placed == sorted(r.order.order_id for r in rows)
    assert len(parts) > 300 // 40


# --- fairness -------------------------------------------------------------------------------


def fairness_case() -> World:
    """From the pickup: quick (best, waited 10 s), slower (+24 s ETA, waited 15 min), far
    (+47 s, beyond the 30 s tolerance, waited an hour)."""
    return world(
        [
            worker("quick", 100.0, waited_s=10.0),
            worker("slower", 250.0, waited_s=900.0),
            worker("far", 400.0, waited_s=3_600.0),
        ]
    )


def test_fairness_prefers_the_longest_wait_among_near_equal_candidates() -> None:
    workers, index = fairness_case()
    result = assign_batch([ride("o1")], workers, index, NOW, MatchConfig(fairness_weight=1.0))
    assert pairs(result) == {"o1": "slower"}
    assert result.decisions["o1"].reason == (
        "fairness: within 30 s of best, waited longest (900 s vs 10 s for the best)"
    )


def test_fairness_weight_zero_is_plain_cost() -> None:
    workers, index = fairness_case()
    result = assign_batch([ride("o1")], workers, index, NOW, PLAIN)
    assert pairs(result) == {"o1": "quick"}
    assert result.decisions["o1"].reason == "optimal batch assignment: lowest total pickup ETA"
    found = candidates(ride("o1"), workers, index, NOW, PLAIN)
    assert assignment_costs(found, PLAIN) == [c.cost for c in found]


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_fairness_never_reaches_beyond_the_tolerance(weight: float) -> None:
    workers, index = fairness_case()
    result = assign_batch([ride("o1")], workers, index, NOW, MatchConfig(fairness_weight=weight))
    assert pairs(result)["o1"] != "far"


def test_half_weight_trades_a_second_of_eta_for_a_second_of_wait() -> None:
    # slower waited only 10 s longer but is 24 s further: not worth it at weight 0.5.
    workers, index = world(
        [worker("quick", 100.0, waited_s=890.0), worker("slower", 250.0, waited_s=900.0)]
    )
    half = MatchConfig(fairness_weight=0.5)
    assert pairs(assign_batch([ride("o1")], workers, index, NOW, half)) == {"o1": "quick"}
    full = MatchConfig(fairness_weight=1.0)
    assert pairs(assign_batch([ride("o1")], workers, index, NOW, full)) == {"o1": "slower"}


@pytest.mark.parametrize("seed", range(30))
def test_fairness_alone_picks_inside_the_tolerance_and_at_full_weight_the_longest_wait(
    seed: int,
) -> None:
    rng = random.Random(seed)
    config = MatchConfig(fairness_weight=rng.choice([0.3, 0.7, 1.0]), fairness_tolerance_s=30.0)
    [order], (workers, index) = random_world(rng, 1, 8, 600.0, max_wait_s=1_200.0)
    found = candidates(order, workers, index, NOW, config)
    [chosen] = assign_batch([order], workers, index, NOW, config).assignments
    best = min(c.cost for c in found)
    assert chosen.cost <= best + 30.0
    if config.fairness_weight == 1.0:
        near = [c for c in found if c.cost <= best + 30.0]
        assert chosen.driver_id == max(near, key=lambda c: c.waiting_s).driver_id


@pytest.mark.parametrize("seed", range(10))
def test_fairness_costs_a_batch_at_most_twice_weight_times_tolerance_per_order(seed: int) -> None:
    rng = random.Random(seed)
    orders, (workers, index) = random_world(rng, 30, 36, 2_000.0, max_wait_s=1_200.0)
    fair_config = MatchConfig(fairness_weight=0.5)
    plain = assign_batch(orders, workers, index, NOW, PLAIN)
    fair = assign_batch(orders, workers, index, NOW, fair_config)
    assert len(fair.assignments) == len(plain.assignments)
    extra = sum(a.cost for a in fair.assignments) - sum(a.cost for a in plain.assignments)
    assert -1e-6 <= extra <= 2 * 0.5 * 30.0 * len(orders)


def test_fairness_adjustment_keeps_near_candidates_between_best_and_tolerance() -> None:
    found = [
        Candidate("a", 100.0, 10.0, waiting_s=0.0, cost=10.0),
        Candidate("b", 200.0, 25.0, waiting_s=500.0, cost=25.0),
        Candidate("c", 300.0, 41.0, waiting_s=5_000.0, cost=41.0),
    ]
    costs = assignment_costs(found, MatchConfig(fairness_weight=1.0, fairness_tolerance_s=30.0))
    assert 10.0 <= costs[0] <= 40.0 and 10.0 <= costs[1] <= 40.0
    assert costs[1] < costs[0]  # b waited longest among the near-equal
    assert costs[2] == 41.0  # c is outside the tolerance: untouched


# --- delivery timing ------------------------------------------------------------------------


def test_a_delivery_too_early_for_even_the_quickest_courier_is_deferred() -> None:
    workers, index = world([worker("c1", 300.0)])
    result = assign_batch([delivery("d1", ready_in_s=600.0)], workers, index, NOW)
    assert result.assignments == [] and result.deferred == ["d1"]
    decision = result.decisions["d1"]
    early = decision.candidates[0].candidate.early_s
    assert early > 120.0
    assert decision.reason == f"deferred: would arrive {early:.0f} s before food ready"
    assert decision.outcome == "deferred" and decision.chosen_driver_id is None


def test_a_deferred_delivery_leaves_its_courier_free_for_the_batch() -> None:
    workers, index = world([worker("c1", 300.0)])
    orders = [delivery("d1", ready_in_s=600.0), ride("r1", north_m=600.0)]
    result = assign_batch(orders, workers, index, NOW)
    assert pairs(result) == {"r1": "c1"}
    assert result.deferred == ["d1"]


def test_a_delivery_within_the_slack_is_offered() -> None:
    workers, index = world([worker("c1", 300.0)])  # about 47 s away
    result = assign_batch([delivery("d1", ready_in_s=47.0 + 100.0)], workers, index, NOW)
    assert pairs(result) == {"d1": "c1"}
    assert result.decisions["d1"].reason.endswith("s before food ready")


def test_a_delivery_prefers_the_courier_arriving_near_ready_at() -> None:
    # near: ~47 s away, ~103 s early; far: ~141 s away, ~9 s early.
    workers, index = world([worker("near", 300.0), worker("far", 900.0)])
    result = assign_batch([delivery("d1", ready_in_s=150.0)], workers, index, NOW, PLAIN)
    assert pairs(result) == {"d1": "far"}
    assert result.decisions["d1"].reason.startswith("optimal batch assignment")


def test_a_delivery_already_ready_goes_to_the_quickest_courier() -> None:
    workers, index = world([worker("near", 300.0), worker("far", 900.0)])
    result = assign_batch([delivery("d1", ready_in_s=-60.0)], workers, index, NOW, PLAIN)
    assert pairs(result) == {"d1": "near"}
    assert result.decisions["d1"].reason.endswith("; food ready on arrival")


def test_greedy_defers_deliveries_by_the_same_rule() -> None:
    workers, index = world([worker("c1", 300.0)])
    assert sequential_greedy([delivery("d1", 600.0)], workers, index, NOW).deferred == ["d1"]


# --- decisions ------------------------------------------------------------------------------


def test_a_decision_records_every_candidate_with_its_figures_and_is_json() -> None:
    orders, (workers, index) = crossing_case()
    result = assign_batch(orders, workers, index, NOW, PLAIN)
    decision = result.decisions["a"]
    doc = json.loads(json.dumps(decision.to_dict()))
    assert doc["order_id"] == "a" and doc["outcome"] == "assigned"
    assert doc["chosen_driver_id"] == "w-west" and doc["solver"] == "exact"
    assert doc["decided_at"] == NOW
    assert {c["driver_id"] for c in doc["candidates"]} == {"w-near", "w-west"}
    for c in doc["candidates"]:
        assert set(c) == {
            "driver_id",
            "distance_m",
            "eta_s",
            "waiting_s",
            "early_s",
            "cost",
            "assignment_cost",
            "near_best",
        }


def test_a_decision_keeps_its_figures_to_the_millimetre_and_stays_small() -> None:
    """Stored in the statement that writes a batch's offers: a decision of eight candidates
    (the usual number; an order whose candidates all went to others has more) is small
    enough, under ~2 000 bytes with its row, that Postgres stores it as it is rather than
    compress it."""
    orders, (workers, index) = random_world(random.Random(3), 60, 40, 4_000.0, max_wait_s=600)
    result = assign_batch(orders, workers, index, NOW, MatchConfig(k_nearest=8))
    sizes = []
    for decision in result.decisions.values():
        full = decision.candidates
        doc = decision.to_dict()
        assert len(doc["candidates"]) == len(full)
        for c, kept in zip(full, doc["candidates"], strict=True):
            assert kept["eta_s"] == pytest.approx(c.candidate.eta_s, abs=5e-4)
            assert kept["distance_m"] == pytest.approx(c.candidate.distance_m, abs=5e-4)
            assert kept["assignment_cost"] == pytest.approx(c.assignment_cost, abs=5e-4)
            assert kept["distance_m"] == round(kept["distance_m"], 3)
        # as the service stores it: a uuid order id, an id of ten characters per driver
        named = {
            **doc,
            "order_id": "2f1c7a9e-3d4b-4c6a-9b8e-7f6a5d4c3b2a",
            "candidates": [
                {**c, "driver_id": f"drv-{i:06d}"} for i, c in enumerate(doc["candidates"])
            ],
        }
        if len(full) == 8:
            sizes.append(len(json.dumps(named, separators=(",", ":"))))
    assert len(sizes) > 10
    assert max(sizes) < 1_700, max(sizes)


def test_the_reason_names_the_order_that_took_the_best_candidate() -> None:
    orders, (workers, index) = crossing_case()
    result = assign_batch(orders, workers, index, NOW, PLAIN)
    assert result.decisions["a"].reason == (
        "best candidate taken by another order in the batch (w-near went to b)"
    )
    assert result.decisions["b"].reason == "optimal batch assignment: lowest total pickup ETA"


def test_every_order_of_a_batch_gets_a_decision_with_a_reason() -> None:
    orders, (workers, index) = random_world(random.Random(8), 40, 30, 4_000.0, max_wait_s=600)
    result = assign_batch(orders, workers, index, NOW)
    assert set(result.decisions) == {o.order_id for o in orders}
    assert all(d.reason for d in result.decisions.values())
    json.dumps([d.to_dict() for d in result.decisions.values()])


class _MeasuringOtherwise(GreatCircleEta):
    """A provider derived from the great-circle one, measuring its own way: asked per hit."""

    def pickup(self, from_lat: float, from_lng: float, to_lat: float, to_lng: float) -> Leg:
        return Leg(1000.0 + abs(from_lat - to_lat) * 1e5, 100.0 + abs(from_lng - to_lng) * 1e4)

    def along_arc(self, arc_m: float) -> Leg:
        raise AssertionError("a subclass may measure otherwise: it is asked, not given the arc")


@pytest.mark.parametrize("eta", [GREAT_CIRCLE, GreatCircleEta(1.7, 6.1), _MeasuringOtherwise()])
def test_candidates_found_are_each_candidates_own_to_the_bit(eta: GreatCircleEta) -> None:
    """``candidates_found`` works out an order's constants once for all its candidates; each
    must be what ``_candidate`` builds from the same hit (waits of every sign, rides, and
    deliveries early, late and without a ready time), in the same order."""
    rng = random.Random(3)
    staff = [
        worker(
            f"w{i:02d}",
            rng.uniform(-3000, 3000),
            rng.uniform(-3000, 3000),
            rng.choice([-5.0, 0.0, rng.uniform(0, 900)]),
        )
        for i in range(40)
    ]
    staff += [worker("w-half", 700.0, 10.0, 0.5), worker("w-soon", -700.0, 0.0, -0.5)]
    twin = staff[0]  # a second worker on the same spot: ties broken by driver_id
    staff.append(Worker("w-twin", twin.lat, twin.lng, waiting_since=twin.waiting_since))
    workers, index = world(staff)
    orders = [
        ride("r", 120.0, -40.0),
        delivery("early", 900.0, 300.0),
        delivery("late", -60.0, -200.0),
        OpenOrder("no-ready", "delivery", *at(50.0), created_at=NOW),
    ]
    for order in orders:
        hits = index.nearby(order.pickup_lat, order.pickup_lng, 10_000.0, 43, NOW)
        found = candidates_found(order, hits, workers, NOW, MatchConfig(), eta)
        one_by_one = [
            _candidate(
                order,
                h,
                eta.along_arc(h.distance_m)
                if type(eta) is GreatCircleEta
                else eta.pickup(h.position.lat, h.position.lng, order.pickup_lat, order.pickup_lng),
                workers[h.position.driver_id].waiting_since,
                NOW,
                MatchConfig(),
            )
            for h in hits
        ]
        one_by_one.sort(key=lambda c: (c.cost, c.distance_m, c.driver_id))
        assert len(found) == 43
        assert [tuple(c) for c in found] == [tuple(c) for c in one_by_one]
        assert [c.cost for c in found] == sorted(c.cost for c in found)
