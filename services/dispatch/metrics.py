"""Dispatch service metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from polder.common.metrics import CommonMetrics

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
