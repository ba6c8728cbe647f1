"""What a running location service holds: built once in the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from polder.common.db import Pool
from polder.common.geoindex import LocationIndex
from polder.common.ratelimit import RateLimiter
from polder.common.settings import Settings
from polder.location.domain.status import DriverStatuses
from polder.location.handlers import Ingest
from polder.location.metrics import LocationMetrics


@dataclass(frozen=True, slots=True)
class LocationRuntime:
    settings: Settings
    index: LocationIndex
    statuses: DriverStatuses
    ingest: Ingest
    limiter: RateLimiter
    metrics: LocationMetrics
    pool: Pool
