"""Dispatch service metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import h3.api.basic_int as h3
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from polder.common.metrics import CommonMetrics
from polder.dispatch.domain.surge import SurgeModel

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


class DispatchMetrics(CommonMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.order_to_offer = Histogram(
            "polder_dispatch_order_to_offer_seconds",
            "Order placed to its first offer",
            buckets=_LATENCY,
            registry=registry,
        )
        self.order_to_assignment = Histogram(
            "polder_dispatch_order_to_assignment_seconds",
            "Order placed to an accepted offer",
            buckets=_LATENCY,
            registry=registry,
        )
        self.offers = Counter(
            "polder_dispatch_offers_total",
            "Offers by outcome (made, accepted, declined, expired, withdrawn)",
            ["outcome"],
            registry=registry,
        )
        self.open_orders = Gauge(
            "polder_dispatch_open_orders", "Orders searching for a worker", registry=registry
        )
        self.available_workers = Gauge(
            "polder_dispatch_available_workers",
            "Idle workers with a fresh position, at the last batch",
            registry=registry,
        )
        self.batch_size = Histogram(
            "polder_dispatch_batch_orders",
            "Orders considered per matching batch",
            buckets=(0, 1, 5, 10, 25, 50, 100, 200, 400, 800, 1600),
            registry=registry,
        )
        self.solve_time = Histogram(
            "polder_dispatch_batch_solve_seconds",
            "Time to build candidates and solve one batch's assignment",
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
            ),
            registry=registry,
        )
        self.apply_time = Histogram(
            "polder_dispatch_batch_apply_seconds",
            "Time to write one batch's offers (one transaction)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.pickup_eta = Histogram(
            "polder_dispatch_pickup_eta_seconds",
            "Pickup ETA of offers made",
            buckets=(30, 60, 120, 180, 300, 450, 600, 900, 1200),
            registry=registry,
        )
        self.orders_expired = Counter(
            "polder_dispatch_orders_expired_total",
            "Orders that found no worker before the search timeout",
            registry=registry,
        )
        self.decisions_pruned = Counter(
            "polder_dispatch_decisions_pruned_total",
            "Matching decisions deleted past POLDER_DECISIONS_KEEP_H",
            registry=registry,
        )
        self.orders_placed = Counter(
            "polder_dispatch_orders_placed_total",
            "Orders placed (an idempotent retry is not counted again)",
            ["kind"],
            registry=registry,
        )
        self.optimistic_steps = Counter(
            "polder_dispatch_optimistic_steps_total",
            "Steps tried without a transaction, by outcome: applied, or run again in one "
            "because a row they read changed before their write (changed) or because they "
            "needed a lock (needs_lock)",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("applied", "changed", "needs_lock"):  # present from the start
            self.optimistic_steps.labels(outcome)


class SurgeCollector(Collector):
    """Demand, supply and surge multiplier of each res-7 cell with activity in the surge
    window, read from the model at scrape time. The label is bounded by the city's area (a
    res-7 cell is about 5 km², so tens to a few hundred cells), unlike a driver or order id."""

    NAMES = (
        "polder_dispatch_cell_demand_orders",
        "polder_dispatch_cell_supply_workers",
        "polder_dispatch_cell_surge_multiplier",
    )

    def __init__(
        self,
        model: SurgeModel,
        refresh: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.refresh = refresh
        self.clock = clock

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        demand, supply, multiplier = self.NAMES
        return (
            GaugeMetricFamily(
                demand, "Orders in the surge window, smoothed over neighbours", labels=["cell"]
            ),
            GaugeMetricFamily(
                supply, "Mean available workers in the surge window, smoothed", labels=["cell"]
            ),
            GaugeMetricFamily(multiplier, "Surge multiplier quoted now", labels=["cell"]),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.refresh()
        now = self.clock()
        demand, supply, multiplier = self._families()
        for cell in self.model.cells():
            p = self.model.pressure(cell, now)
            if p.demand == 0 and p.supply == 0:
                continue  # left the window; evicted at the next sweep
            label = [h3.int_to_str(cell)]
            demand.add_metric(label, float(p.demand))
            supply.add_metric(label, float(p.supply))
            multiplier.add_metric(label, float(p.multiplier))
        yield demand
        yield supply
        yield multiplier
