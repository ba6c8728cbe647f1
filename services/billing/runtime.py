"""What a running billing service holds: built once in the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from polder.billing.metrics import BillingMetrics
from polder.billing.periods import PeriodCloser
from polder.billing.statements import Reports, Statements
from polder.common.settings import Settings


@dataclass(frozen=True, slots=True)
class BillingRuntime:
    settings: Settings
    statements: Statements
    reports: Reports
    closer: PeriodCloser
    metrics: BillingMetrics
