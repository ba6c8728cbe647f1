"""Which workers are on shift, as the location service knows it from ``polder.driver.events``.

Dispatch numbers every state change of a worker (``seq``, per driver, in the order of their
server times): a change older than what is known for that driver is ignored, so events may be
replayed, arrive before a snapshot, or be seen twice. A driver never heard of is offline.

On shift is every state but ``offline``: a worker on ``break`` is still signed in (DESIGN §4:
"online, not available") and billing keeps their break open on their signs of life, pings
included; without them a break longer than the silence timeout would end as offline.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class StatusChange:
    driver_id: str
    seq: int
    status: str  # the state the worker changed to


class DriverStatuses:
    """The newest known state of every worker; ``on_shift`` is one dict lookup."""

    def __init__(self) -> None:
        self._seq: dict[str, int] = {}
        self._on_shift: dict[str, bool] = {}

    def __len__(self) -> int:
        return sum(self._on_shift.values())

    def on_shift(self, driver_id: str) -> bool:
        return self._on_shift.get(driver_id, False)

    def apply(self, change: StatusChange) -> bool:
        """Follow one change; True if it is newer than what was known."""
        if change.seq <= self._seq.get(change.driver_id, 0):
            return False
        self._seq[change.driver_id] = change.seq
        self._on_shift[change.driver_id] = change.status != OFFLINE
        return True

    def load(self, changes: Iterable[StatusChange]) -> None:
        for change in changes:
            self.apply(change)


def newest(changes: Iterable[StatusChange]) -> list[StatusChange]:
    """The newest change of each driver among ``changes`` (a batch to store)."""
    best: dict[str, StatusChange] = {}
    for c in changes:
        known = best.get(c.driver_id)
        if known is None or c.seq > known.seq:
            best[c.driver_id] = c
    return list(best.values())
