"""What a running dispatch service holds: built once in the composition root."""

from __future__ import annotations

from dataclasses import dataclass

from polder.common.bus import Bus
from polder.common.settings import Settings
from polder.dispatch.feed import Feed
from polder.dispatch.handlers import Handlers
from polder.dispatch.matcher import Matcher
from polder.dispatch.metrics import DispatchMetrics
from polder.dispatch.orders import OrderDesk


@dataclass(frozen=True, slots=True)
class DispatchRuntime:
    settings: Settings
    bus: Bus
    handlers: Handlers
    desk: OrderDesk
    matcher: Matcher
    feed: Feed
    metrics: DispatchMetrics
