"""Keeping a LocationIndex up to date from ``polder.location.pings_recorded.v1`` events.

Both the location service (every fresh driver) and dispatch (to know where available workers
are) consume the location stream this way.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from polder.common.bus import Received
from polder.common.envelope import parse_time
from polder.common.geoindex import LocationIndex

# A ping's device time, for max(): itemgetter stays in C, once per ping of every batch.
_RECORDED_MS = operator.itemgetter("recorded_at_ms")


def apply_pings(index: LocationIndex, records: Sequence[Received]) -> list[float]:
    """Upsert each event's newest ping; return each event's server receipt time (epoch s)."""
    received: list[float] = []
    for r in records:
        data = r.event.data
        seen_at = parse_time(data["received_at"]).timestamp()
        # The index keeps one position per driver: only the batch's newest ping can matter.
        newest = max(data["pings"], key=_RECORDED_MS)
        recorded_at = newest["recorded_at_ms"] / 1000
        index.upsert(data["driver_id"], newest["lat"], newest["lng"], recorded_at, seen_at)
        received.append(seen_at)
    return received
