"""Billing service metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from polder.common.metrics import CommonMetrics


class BillingMetrics(CommonMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.events_stored = Counter(
            "polder_billing_events_stored_total",
            "Events stored by type (duplicates are not counted)",
            ["type"],
            registry=registry,
        )
        self.duplicates = Counter(
            "polder_billing_duplicate_events_total",
            "Events delivered again and ignored",
            registry=registry,
        )
        self.postings = Counter(
            "polder_billing_ledger_postings_total",
            "Ledger transactions posted, by kind",
            ["kind"],
            registry=registry,
        )
        self.waiting_seconds = Counter(
            "polder_billing_waiting_seconds_total",
            "Waiting seconds in statements served, paid or unpaid, by policy",
            ["policy", "paid"],
            registry=registry,
        )
        self.pings_thinned = Counter(
            "polder_billing_pings_thinned_total",
            "Pings past retention whose positions were deleted (kept as res-8 marks and legs)",
            registry=registry,
        )
        self.topups = Counter(
            "polder_billing_topup_minor_total",
            "Top-ups posted to the ledger, by policy and currency (minor units)",
            ["policy", "currency"],
            registry=registry,
        )
        # The fleet's last hour, recomputed every minute (polder.billing.fleet).
        self.fleet_phase = Gauge(
            "polder_billing_fleet_phase_seconds",
            "Online seconds of all workers in the last hour, by phase (P1 waiting for a job, "
            "P2 to the pickup, P3 on the trip)",
            ["phase"],
            registry=registry,
        )
        self.fleet_waiting = Gauge(
            "polder_billing_fleet_waiting_seconds",
            "Waiting seconds of all workers in the last hour under the default policy, paid or not",
            ["paid"],
            registry=registry,
        )
        self.unpaid_waiting_ratio = Gauge(
            "polder_billing_unpaid_waiting_ratio",
            "Unpaid waiting as a share of the fleet's online time in the last hour",
            registry=registry,
        )
        self.fleet_earnings = Gauge(
            "polder_billing_fleet_earnings_per_online_hour_minor",
            "Fleet earnings per online hour in the last hour under each policy, tips excluded "
            "(minor units)",
            ["policy", "currency"],
            registry=registry,
        )
        self.fleet_below_floor = Gauge(
            "polder_billing_fleet_below_floor_ratio",
            "Share of workers online in the last hour whose pay fell below the policy's floor",
            ["policy"],
            registry=registry,
        )
