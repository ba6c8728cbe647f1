"""Surge per H3 res-7 cell: the formula, its window, cap, rounding, eviction and smoothing."""

from __future__ import annotations

import random
from decimal import Decimal

import h3.api.basic_int as h3
import pytest

from polder.dispatch.domain.surge import (
    SurgeConfig,
    SurgeModel,
    _Series,
    count_by_cell7,
    to_cell7,
)

CELL = h3.latlng_to_cell(52.37, 4.89, 7)  # Amsterdam centre
NEIGHBOUR = next(c for c in h3.grid_disk(CELL, 1) if c != CELL)
FAR = h3.latlng_to_cell(40.71, -74.0, 7)  # New York
ISOLATED = SurgeConfig(neighbour_weight=Decimal(0))


def model_with(
    demand: int, supply: int, config: SurgeConfig = ISOLATED, at: float = 0
) -> SurgeModel:
    model = SurgeModel(config)
    for _ in range(demand):
        model.record_demand(CELL, at)
    model.observe_supply({CELL: supply}, at)
    return model


def test_no_demand_means_no_surge() -> None:
    assert model_with(demand=0, supply=5).multiplier(CELL, 1) == Decimal("1.0")
    assert SurgeModel().multiplier(CELL, 1) == 1


def test_supply_at_least_equal_to_demand_means_no_surge() -> None:
    assert model_with(demand=3, supply=3).multiplier(CELL, 1) == 1
    assert model_with(demand=3, supply=7).multiplier(CELL, 1) == 1


def test_without_a_supply_snapshot_there_is_no_evidence_to_surge_on() -> None:
    model = SurgeModel(ISOLATED)
    for _ in range(50):
        model.record_demand(CELL, 0)
    assert model.multiplier(CELL, 1) == 1
    assert model.pressure(CELL, 1).demand == 50


def test_the_multiplier_follows_the_documented_formula() -> None:
    # 8 orders for 2 workers: pressure 4, 1 + 0.5 x (4 - 1) = 2.5
    assert model_with(demand=8, supply=2).multiplier(CELL, 1) == Decimal("2.5")
    # 5 for 2: pressure 2.5, 1 + 0.5 x 1.5 = 1.75, rounded down to the 0.1 step
    pressure = model_with(demand=5, supply=2).pressure(CELL, 1)
    assert (pressure.demand, pressure.supply) == (Decimal(5), Decimal(2))
    assert pressure.multiplier == Decimal("1.7")


def test_the_multiplier_is_capped() -> None:
    assert model_with(demand=100, supply=1).multiplier(CELL, 1) == Decimal("3.0")
    low_cap = SurgeConfig(cap=Decimal("1.5"), neighbour_weight=Decimal(0))
    assert model_with(demand=100, supply=1, config=low_cap).multiplier(CELL, 1) == Decimal("1.5")


def test_an_empty_cell_counts_as_one_worker_so_a_lone_order_does_not_surge() -> None:
    assert model_with(demand=1, supply=0).multiplier(CELL, 1) == 1
    # 3 orders, nobody there: 3 / max(0, 1) = 3, 1 + 0.5 x 2 = 2.0
    assert model_with(demand=3, supply=0).multiplier(CELL, 1) == Decimal("2.0")


def test_supply_is_the_mean_over_the_snapshots_of_the_window() -> None:
    model = SurgeModel(ISOLATED)
    for _ in range(4):
        model.record_demand(CELL, 10)
    model.observe_supply({CELL: 4}, 0)
    model.observe_supply({FAR: 3}, 10)  # CELL absent: nobody available there
    assert model.pressure(CELL, 20).supply == 2
    assert model.multiplier(CELL, 20) == Decimal("1.5")


def test_old_events_fall_out_of_the_window() -> None:
    model = model_with(demand=8, supply=2, at=1000)
    assert model.multiplier(CELL, 1000 + 299) == Decimal("2.5")
    assert model.multiplier(CELL, 1000 + 300) == 1  # the window is (now - 300 s, now]
    assert model.pressure(CELL, 1000 + 300).demand == 0
    # Events after `now` do not count either.
    assert model.multiplier(CELL, 999) == 1


def test_a_late_event_from_before_the_window_is_dropped() -> None:
    model = model_with(demand=1, supply=1, at=1000)
    model.record_demand(FAR, 600)
    assert model.pressure(FAR, 1000).demand == 0
    assert model.cells_tracked == 1


def test_cells_that_went_quiet_are_evicted() -> None:
    model = SurgeModel()
    cells = list(h3.grid_disk(FAR, 3))
    for cell in cells:
        model.record_demand(cell, 0)
    model.observe_supply(dict.fromkeys(cells, 2), 0)
    assert model.cells_tracked == len(cells)
    model.record_demand(CELL, 1000)  # time moves on: the next event sweeps the old ones out
    assert model.cells_tracked == 1
    assert model.evict(now=2000) == 1 and model.cells_tracked == 0


def test_memory_stays_bounded_under_a_steady_stream() -> None:
    config = SurgeConfig(window_s=60, bucket_s=1)
    model = SurgeModel(config)
    for i in range(20_000):  # 2 000 s of orders, ten a second, and a snapshot a second
        at = i / 10
        model.record_demand(CELL, at)
        if i % 10 == 0:
            model.observe_supply({CELL: 5, NEIGHBOUR: 1}, at)
    # Per active cell and for the snapshots: at most two windows of one-second buckets.
    assert model.buckets_held <= 3 * 2 * 60
    assert model.pressure(CELL, 2000).demand == pytest.approx(600, abs=10)


def test_neighbouring_cells_smooth_demand_and_supply() -> None:
    smoothing = SurgeConfig(neighbour_weight=Decimal("0.5"))
    model = SurgeModel(smoothing)
    for _ in range(4):
        model.record_demand(CELL, 0)
    model.observe_supply({NEIGHBOUR: 4}, 0)
    # Workers next door count half: S = 0.5 x 4 = 2, pressure 2, multiplier 1.5.
    assert model.pressure(CELL, 1).supply == 2
    assert model.multiplier(CELL, 1) == Decimal("1.5")
    # Without smoothing the cell looks empty: 4 / max(0, 1) = 4, multiplier 2.5.
    isolated = SurgeModel(ISOLATED)
    for _ in range(4):
        isolated.record_demand(CELL, 0)
    isolated.observe_supply({NEIGHBOUR: 4}, 0)
    assert isolated.multiplier(CELL, 1) == Decimal("2.5")
    # Demand next door counts half towards this cell too.
    assert model.pressure(NEIGHBOUR, 1).demand == 2


def test_multipliers_are_always_decimal_steps_between_one_and_the_cap() -> None:
    rng = random.Random(7)
    cells = list(h3.grid_disk(CELL, 2))
    model = SurgeModel()
    for second in range(600):
        for _ in range(rng.randint(0, 4)):
            model.record_demand(rng.choice(cells), second + rng.random())
        model.observe_supply({c: rng.randint(0, 3) for c in cells}, second)
        if second % 37 == 0:
            for cell in cells:
                m = model.multiplier(cell, second)
                assert Decimal(1) <= m <= model.config.cap
                assert m == m.quantize(Decimal("0.1"))


def test_cells_must_be_resolution_seven() -> None:
    fine = h3.latlng_to_cell(52.37, 4.89, 9)
    model = SurgeModel()
    with pytest.raises(ValueError):
        model.record_demand(fine, 0)
    with pytest.raises(ValueError):
        model.observe_supply({fine: 1}, 0)
    with pytest.raises(ValueError):
        model.multiplier(fine, 0)
    assert to_cell7(fine) == CELL and to_cell7(CELL) == CELL
    with pytest.raises(ValueError):
        to_cell7(h3.latlng_to_cell(52.37, 4.89, 5))
    assert count_by_cell7([fine, fine, h3.latlng_to_cell(40.71, -74.0, 9)]) == {CELL: 2, FAR: 1}


def test_a_config_that_cannot_work_is_rejected() -> None:
    with pytest.raises(ValueError):
        SurgeConfig(cap=Decimal("2.25"))
    with pytest.raises(ValueError):
        SurgeConfig(cap=Decimal("0.9"))
    with pytest.raises(ValueError):
        SurgeConfig(window_s=10, bucket_s=20)
    with pytest.raises(ValueError):
        SurgeConfig(neighbour_weight=Decimal(2))


def test_window_sums_kept_current_equal_summing_anew() -> None:
    """The kept sums (a window sliding on, adds inside and outside it, eviction, a window
    asked for out of order) always equal the sum of the buckets in the window."""
    rng = random.Random(7)
    series, truth, now = _Series(), {}, 0
    for _ in range(5_000):
        r = rng.random()
        if r < 0.5:
            bucket, n = rng.randint(0, 400), rng.randint(1, 3)
            series.add(bucket, n)
            truth[bucket] = truth.get(bucket, 0) + n
        elif r < 0.97:
            # mostly sliding on by a few buckets, sometimes back or far ahead
            now = rng.randint(0, 500) if rng.random() < 0.05 else now + rng.randint(0, 3)
            first, last = now - 120, now
            want = sum(n for b, n in truth.items() if first < b <= last)
            assert series.total(first, last) == want
        else:
            through = rng.randint(0, 200)
            assert series.drop_through(through) == len([b for b in truth if b <= through])
            truth = {b: n for b, n in truth.items() if b > through}
