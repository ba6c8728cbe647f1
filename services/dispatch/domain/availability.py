"""The matcher's in-memory view of which workers are available (idle), and since when they wait.

Postgres stays the truth: a batch locks every chosen worker with ``status = 'idle'`` before it
writes an offer, so a stale view only costs a skipped assignment, never a double booking. The
view is loaded once from the ``workers`` table and then follows the workers' state events
(``polder.driver.state_changed.v1``), which are numbered per driver (``seq``): an event or a
snapshot row older than what the view already holds for that driver is ignored, so events may be
replayed, arrive before the snapshot, or be seen twice.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from polder.common.geoindex import LocationIndex, Position
from polder.dispatch.domain.match_types import Worker
from polder.dispatch.domain.states import NEW_WAIT_AFTER, Cause, WorkerStatus

if TYPE_CHECKING:
    from polder.dispatch.domain.nearest import WorkerPoints

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
        # Told (driver_id, idle) at every state taken, e.g. WorkerPoints.idle_changed.
        self.on_idle: Callable[[str, bool], None] | None = None

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
        idle = state.status is WorkerStatus.IDLE
        if idle:
            self._idle[driver_id] = state.waiting_since
        else:
            self._idle.pop(driver_id, None)
        if self.on_idle is not None:
            self.on_idle(driver_id, idle)


class FreshIdle(Mapping[str, Worker]):
    """The workers a batch may offer to: idle, with a position younger than the index's TTL.

    A view, not a copy: a batch looks up only the candidates its searches find (a few per
    order), so it builds a ``Worker`` for those and never walks all idle workers first (for
    10 000 of them that walk took tens of milliseconds of every batch's latency). Worker
    positions come from the index, as the candidate search sees them.
    """

    __slots__ = ("_idle", "_positions", "_now", "points")

    def __init__(
        self,
        idle: Mapping[str, float | None],
        positions: LocationIndex,
        now: float,
        points: WorkerPoints | None = None,
    ):
        """``points``: the same idle workers' positions kept as arrays (see
        ``nearest.WorkerPoints``), for a batch's tree; without, it walks them."""
        if points is not None and not points.follows(positions, idle):
            raise ValueError("the points follow another index or other workers")
        self._idle = idle
        self._positions = positions
        self._now = now
        self.points = points

    def __contains__(self, driver_id: object) -> bool:
        return isinstance(driver_id, str) and self._position(driver_id) is not None

    def __getitem__(self, driver_id: str) -> Worker:
        pos = self._position(driver_id)
        if pos is None:
            raise KeyError(driver_id)
        return Worker(driver_id, pos.lat, pos.lng, self.waiting_since(driver_id))

    def waiting_since(self, driver_id: str) -> float:
        """``self[driver_id].waiting_since`` for a worker known to be here, without the
        position check (the candidate search found them fresh and idle at this view's time)."""
        since = self._idle[driver_id]
        return self._now if since is None else since

    def _position(self, driver_id: str) -> Position | None:
        """The worker's fresh position if they are idle, else None."""
        if driver_id not in self._idle:
            return None
        pos = self._positions.get(driver_id)
        return pos if pos is not None and self._positions.is_fresh(pos, self._now) else None

    def membership_among(self, index: LocationIndex, now: float) -> Callable[[str], bool]:
        """``in`` for drivers that ``index.nearby(..., now)`` asks about, which are all fresh at
        ``now``: over this view's own index and clock, whether they are idle, without looking
        their position up again (the candidate search asks this of every fresh driver in the
        cells it searches); otherwise ``in`` itself."""
        if self.indexed_by(index, now):
            return self._idle.__contains__
        return self.__contains__

    def indexed_by(self, index: LocationIndex, now: float) -> bool:
        """Whether this view is over ``index`` at ``now`` (its members are then exactly the
        idle drivers that index holds fresh at that time)."""
        return index is self._positions and now == self._now

    def positions(self) -> list[Position]:
        """The position of each of these workers (one walk over the idle ones)."""
        get, ttl, now = self._positions.get, self._positions.ttl_s, self._now
        return [
            pos
            for driver_id in self._idle
            if (pos := get(driver_id)) is not None and now - pos.seen_at < ttl
        ]

    def __iter__(self) -> Iterator[str]:
        return (driver_id for driver_id, _ in self._fresh())

    def __len__(self) -> int:
        return sum(1 for _ in self._fresh())

    def cells(self, taken: Collection[str] = ()) -> list[int]:
        """The index cell of each of these workers (one entry per worker): a supply census.

        ``taken``: workers a batch has just offered to, counted as available (as the batch
        saw them) whether or not their state event has reached the view yet. A census taken
        after the batch's offers is otherwise of that moment: workers who came online or moved
        while the offers were written are in it, those who left are not."""
        cells = [cell for driver_id, cell in self._fresh() if driver_id not in taken]
        for driver_id in taken:
            pos = self._positions.get(driver_id)
            if pos is not None:
                cells.append(pos.cell)
        return cells

    def _fresh(self) -> Iterator[tuple[str, int]]:
        return ((pos.driver_id, pos.cell) for pos in self.positions())
