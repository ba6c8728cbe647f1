"""Per-token request budgets of one service, at the HTTP edge: a spent budget is a 429 with a
``Retry-After`` in whole seconds (at least 1), counted by budget.

Two budgets: ``api`` for every authenticated request, ``reports`` for operators' reporting
routes, which scan many workers' records per request and so get a smaller budget of their own
(a dashboard polling reports neither spends nor is starved by the operator's other requests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from enum import StrEnum

from prometheus_client import Counter

from polder.common.errors import ApiError
from polder.common.ratelimit import RateLimiter
from polder.common.settings import Settings


class Budget(StrEnum):
    API = "api"
    REPORTS = "reports"


class Throttle:
    def __init__(
        self,
        settings: Settings,
        refused: Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``refused``: a counter with a ``budget`` label, incremented per 429."""
        self._limiters = {
            Budget.API: RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
            Budget.REPORTS: RateLimiter(
                settings.report_rate_limit_per_s, settings.report_rate_limit_burst
            ),
        }
        self._refused = refused
        self._clock = clock

    def charge(self, token_key: str, budget: Budget = Budget.API) -> None:
        """Take one request from the token's budget, or refuse it with 429."""
        wait = self._limiters[budget].take(token_key, self._clock())
        if wait <= 0:
            return
        self._refused.labels(budget.value).inc()
        retry = max(1, math.ceil(wait))
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests for this token; retry in {retry} s",
            headers={"Retry-After": str(retry)},
            retry_after_s=retry,
            budget=budget.value,
        )
