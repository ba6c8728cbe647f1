"""Matching decisions past their keep time are deleted.

A batch writes a decision (with its candidates, ~2.3 KB on disk) for every order it considered,
and an order that searches for minutes gets one a batch: ~40 GB a day at 200 orders/s. One
replica at a time runs this (``common.retention.run``).
"""

from __future__ import annotations

from datetime import datetime

from polder.common.db import Pool
from polder.common.retention import delete_before
from polder.dispatch.metrics import DispatchMetrics


class DecisionRetention:
    def __init__(self, pool: Pool, metrics: DispatchMetrics) -> None:
        self.pool = pool
        self.metrics = metrics

    async def __call__(self, cut: datetime) -> int:
        """Delete decisions made before ``cut`` (ids grow with ``decided_at``: one matcher at a
        time writes them); answers how many went."""
        deleted = await delete_before(self.pool, "decisions", "decided_at", cut)
        self.metrics.decisions_pruned.inc(deleted)
        return deleted
