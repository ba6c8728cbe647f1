"""In-process fan-out of offer news to the drivers' WebSocket feeds.

Each connected feed has a bounded queue; a slow client loses the oldest news rather than
holding memory (it can always GET its offers). Offers are made by this process's matcher, so
one process sees every message it must push.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any


class Feed:
    def __init__(self, queue_size: int = 100) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}

    @contextlib.contextmanager
    def subscribe(self, driver_id: str) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.queue_size)
        self._subscribers.setdefault(driver_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(driver_id, set())
            subscribers.discard(queue)
            if not subscribers:
                self._subscribers.pop(driver_id, None)

    def publish(self, driver_id: str, message: dict[str, Any]) -> None:
        for queue in self._subscribers.get(driver_id, ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)

    def connected(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
