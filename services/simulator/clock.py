"""Timestamps for pings, cheaply: the simulator and the load generators stamp many per second."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


@lru_cache(maxsize=4096)
def _second(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def rfc3339_ms(epoch_ms: int) -> str:
    """``2026-01-02T03:04:05.678Z`` for a time in epoch milliseconds."""
    s, ms = divmod(epoch_ms, 1000)
    return f"{_second(s)}.{ms:03d}Z"
