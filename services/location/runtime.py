"""What a running location service holds: built once in the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from polder.common.db import Pool
from polder.common.geoindex import LocationIndex
from polder.common.idempotency import RecentAnswers
from polder.common.settings import Settings
from polder.common.throttle import Throttle
from polder.location.domain.status import DriverStatuses
from polder.location.handlers import Ingest
from polder.location.metrics import LocationMetrics


@dataclass(frozen=True, slots=True)
class LocationRuntime:
    settings: Settings
    index: LocationIndex
    statuses: DriverStatuses
    ingest: Ingest
    throttle: Throttle  # the app's, shared with the HTTP routes' dependency
    metrics: LocationMetrics
    pool: Pool
    answers: RecentAnswers  # to ingest requests sent with an Idempotency-Key
