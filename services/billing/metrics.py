"""Billing service metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

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
        self.topups = Counter(
            "polder_billing_topup_minor_total",
            "Top-up amounts in statements served, by policy and currency (minor units)",
            ["policy", "currency"],
            registry=registry,
        )
