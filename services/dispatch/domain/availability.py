"""The matcher's in-memory view of which workers are available (idle), and since when they wait.

Postgres stays the truth: a batch locks every chosen worker with ``status = 'idle'`` before it
writes an offer, so a stale view only costs a skipped assignment, never a double booking. The
view is loaded once from the ``workers`` table and then follows the workers' state events
(``polder.driver.state_changed.v1``), which are numbered per driver (``seq``): an event or a
snapshot row older than what the view already holds for that driver is ignored, so events may be
replayed, arrive before the snapshot, or be seen twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from polder.dispatch.domain.states import NEW_WAIT_AFTER, Cause, WorkerStatus

_WAITING = frozenset({WorkerStatus.IDLE, WorkerStatus.OFFERED})


@dataclass(frozen=True, slots=True)
class WorkerState:
    seq: int
    status: WorkerStatus
    waiting_since: float | None  # epoch seconds; kept while idle or offered


class Availability:
    def __init__(self) -> None:
        self._states: dict[str, WorkerState] = {}
        self._idle: dict[str, float | None] = {}  # driver_id -> waiting_since; idle ones only

    def __len__(self) -> int:
        return len(self._idle)

    @property
    def idle(self) -> Mapping[str, float | None]:
        """Idle workers and since when each has been waiting (epoch seconds; None: unknown)."""
        return self._idle

    def state(self, driver_id: str) -> WorkerState | None:
        return self._states.get(driver_id)

    def load(self, rows: Iterable[tuple[str, int, str, float | None]]) -> None:
        """Merge a snapshot of ``(driver_id, seq, status, waiting_since)`` rows."""
        for driver_id, seq, status, waiting_since in rows:
            self._set(driver_id, WorkerState(seq, WorkerStatus(status), waiting_since))

    def apply_event(self, data: Mapping[str, Any], time: float) -> bool:
        """Follow one ``state_changed`` event (its ``data`` and envelope time); True if newer."""
        driver_id: str = data["driver_id"]
        seq: int = data["seq"]
        known = self._states.get(driver_id)
        if known is not None and seq <= known.seq:
            return False  # a replay, or older than the snapshot
        after = WorkerStatus(data["to"])
        cause = Cause(data["cause"])
        if after is WorkerStatus.IDLE and cause in NEW_WAIT_AFTER:
            waiting_since: float | None = time
        elif after in _WAITING:
            # Back to idle after an offer (or offered): the wait that began before goes on. A
            # gap (an event missed) leaves nothing known; the event's time is the best guess.
            same_wait = known is not None and known.seq == seq - 1 and known.status in _WAITING
            waiting_since = known.waiting_since if same_wait and known else None
            if waiting_since is None:
                waiting_since = time
        else:
            waiting_since = None
        self._set(driver_id, WorkerState(seq, after, waiting_since))
        return True

    def _set(self, driver_id: str, state: WorkerState) -> None:
        known = self._states.get(driver_id)
        if known is not None and state.seq < known.seq:
            return
        self._states[driver_id] = state
        if state.status is WorkerStatus.IDLE:
            self._idle[driver_id] = state.waiting_since
        else:
            self._idle.pop(driver_id, None)
