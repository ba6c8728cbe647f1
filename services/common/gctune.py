"""Garbage-collector settings for a long-running service process (``polder serve`` and the
child processes services start)."""

from __future__ import annotations

import gc

# Objects tracked by the collector, net of those freed, before a young-generation collection.
# CPython's default (700) makes a busy service collect every few hundred requests. A collection
# pauses the event loop for time in proportion to this number: at 50 000 pings/s the location
# service paused 40-75 ms each time at 100 000 (every ~1.5 s; that alone put its ping→index p99
# over 250 ms), 10-15 ms at 30 000, for about the same CPU in total.
YOUNG_THRESHOLD = 30_000


def settle() -> None:
    """Freeze what start-up built (never collected again) and collect the rest less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 50, 1_000)
