"""Location service metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from polder.common.metrics import CommonMetrics


class LocationMetrics(CommonMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.pings_accepted = Counter(
            "polder_location_pings_accepted_total", "Pings accepted", registry=registry
        )
        self.pings_rejected = Counter(
            "polder_location_pings_rejected_total",
            "Pings rejected, by reason",
            ["reason"],
            registry=registry,
        )
        self.clocks_set_back = Counter(
            "polder_location_clocks_set_back_total",
            "Batches taken from a driver whose device clock was set back (after one batch "
            "refused as stale)",
            registry=registry,
        )
        self.batch_size = Histogram(
            "polder_location_batch_size_pings",
            "Pings per request or WebSocket frame",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=registry,
        )
        self.ping_to_index = Histogram(
            "polder_location_ping_to_index_seconds",
            "Server receipt of a ping batch to its position being in the index",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.indexed_drivers = Gauge(
            "polder_location_indexed_drivers",
            "Drivers in the index (fresh positions)",
            registry=registry,
        )
        self.drivers_on_shift = Gauge(
            "polder_location_drivers_on_shift",
            "Drivers this replica takes pings from (online, on a trip or on a break)",
            registry=registry,
        )
        self.pings_thinned = Counter(
            "polder_location_pings_thinned_total",
            "Raw trace pings past retention, deleted and counted into res-8 cells",
            registry=registry,
        )
        self.traces_written = Counter(
            "polder_location_trace_pings_written_total",
            "Pings written to the trace table",
            registry=registry,
        )
