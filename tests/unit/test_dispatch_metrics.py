"""Per-cell surge gauges read the model at scrape time, labelled by res-7 cell."""

import h3.api.basic_int as h3
from prometheus_client import CollectorRegistry, generate_latest

from polder.dispatch.domain.surge import SURGE_RESOLUTION, SurgeModel
from polder.dispatch.metrics import SurgeCollector

DAM = h3.latlng_to_cell(52.3731, 4.8922, SURGE_RESOLUTION)
ZUID = h3.latlng_to_cell(52.3390, 4.8730, SURGE_RESOLUTION)


def scrape(model: SurgeModel, now: float, refreshed: list[int] | None = None) -> str:
    registry = CollectorRegistry()
    refresh = (lambda: refreshed.append(1)) if refreshed is not None else (lambda: None)
    registry.register(SurgeCollector(model, refresh, clock=lambda: now))
    return generate_latest(registry).decode()


def test_each_active_cell_exports_its_demand_supply_and_multiplier() -> None:
    model = SurgeModel()
    for i in range(6):
        model.record_demand(DAM, 1000.0 + i)
    model.observe_supply({DAM: 1}, 1000.0)
    refreshed: list[int] = []
    text = scrape(model, 1010.0, refreshed)
    cell = h3.int_to_str(DAM)
    pressure = model.pressure(DAM, 1010.0)
    assert f'polder_dispatch_cell_demand_orders{{cell="{cell}"}} {float(pressure.demand)}' in text
    assert f'polder_dispatch_cell_supply_workers{{cell="{cell}"}} {float(pressure.supply)}' in text
    assert (
        f'polder_dispatch_cell_surge_multiplier{{cell="{cell}"}} {float(pressure.multiplier)}'
        in text
    )
    assert pressure.multiplier > 1  # six orders on one worker: the cell surges
    assert refreshed == [1], "supply from the matcher process is refreshed before reading"


def test_cells_that_left_the_window_are_not_exported() -> None:
    model = SurgeModel()
    model.record_demand(ZUID, 1000.0)
    assert h3.int_to_str(ZUID) in scrape(model, 1001.0)
    assert h3.int_to_str(ZUID) not in scrape(model, 1000.0 + 2 * model.config.window_s)
