"""One worker's timeline: the state changes of ``polder.driver.events`` turned into segments.

``build_timeline`` is a pure function of the *set* of changes it is given (DESIGN.md §4, issue 4
"Time"): duplicates (same event id) change nothing, changes are placed by ``(at_ms, seq)``
whatever order they arrived in, and giving it everything again changes nothing. So a consumer
may rebuild a worker's timeline from all its stored changes at every new event, and replaying
a topic from offset 0 ends where it started.

Rules, in the order they apply:

1. The state a change moves to (``to``) lasts until the next change. ``offline`` is no segment;
   every other state is one segment of its kind (``at_pickup`` is split in two, rule 4).
2. The last state lasts until ``until_ms``, the billing cut-off — unless the worker went
   silent (rule 3). Changes after ``until_ms`` are not seen: the timeline is "as of" it.
3. Silence. A worker with no sign of life (a change or a ping) for more than
   ``silence_timeout_ms`` is offline from its last sign of life on: the open segment is closed
   there and marked ``inferred``. At the tail this needs only ``last_sign_of_life_ms``. Given
   the sign-of-life times themselves (``signs_of_life_ms``), silences inside the history are
   cut out too, and the worker is back in its state (as the events have it) from its next sign
   of life. Without them a long stretch between two changes cannot be told from a quiet one and
   is kept whole.
4. Grace. Time at pickup is split at ``arrived + grace_ms(product)``, the free waiting period of
   the trip's product (tariff ``wait_grace_s``: ride 120 s, delivery 300 s; DESIGN.md §4),
   counted from the change that entered ``at_pickup``.
5. Gaps. ``seq`` is per driver and has no gaps (schema), so a missing number is a change not yet
   received. The timeline is still computed (each known state lasts until the next known change)
   and the missing numbers are reported in ``gaps``; billing keeps it provisional meanwhile.

Times are the events' server times (envelope ``time``) in epoch milliseconds.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from polder.billing.domain.segments import (
    ENGAGED,
    ONLINE,
    P1,
    P2,
    P3,
    WAITING,
    Product,
    Segment,
    SegmentKind,
)

K = SegmentKind

# The worker states and causes of polder.driver.state_changed.v1 (the event contract; the
# names are those of dispatch's state machine, which billing does not import).
OFFLINE = "offline"
AT_PICKUP = "at_pickup"
WORKER_STATES: frozenset[str] = frozenset(
    {"offline", "idle", "offered", "en_route_pickup", "at_pickup", "on_trip", "at_dropoff", "break"}
)
CAUSES: frozenset[str] = frozenset(
    {
        "went_online",
        "went_offline",
        "took_break",
        "offer_sent",
        "offer_declined",
        "offer_expired",
        "offer_withdrawn",
        "offer_accepted",
        "arrived_pickup",
        "picked_up",
        "arrived_dropoff",
        "completed",
        "cancelled_by_driver",
        "cancelled_by_customer",
        "search_timed_out",
    }
)
PRODUCTS: frozenset[str] = frozenset({"ride", "delivery"})

# The segment kind of each online state; at_pickup is split at the grace period instead.
_KIND_OF_STATE: Mapping[str, SegmentKind] = {
    "idle": K.IDLE,
    "offered": K.OFFERED,
    "break": K.BREAK,
    "en_route_pickup": K.EN_ROUTE_PICKUP,
    "on_trip": K.ON_TRIP,
    "at_dropoff": K.AT_DROPOFF,
}
_ENGAGED_STATES = frozenset({"en_route_pickup", "at_pickup", "on_trip", "at_dropoff"})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(t: datetime) -> int:
    """A timezone-aware time as integer epoch milliseconds (exact, no float on the way)."""
    if t.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    return (t - _EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class StateChange:
    """One ``polder.driver.state_changed.v1``: the worker went ``from_`` → ``to`` at ``at_ms``."""

    event_id: str
    driver_id: str
    seq: int
    at_ms: int
    from_: str
    to: str
    cause: str
    order_id: str | None = None
    trip_id: str | None = None
    offer_id: str | None = None
    product: Product | None = None

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise ValueError(f"seq must be at least 1: {self.seq}")
        for name, value in (("from", self.from_), ("to", self.to)):
            if value not in WORKER_STATES:
                raise ValueError(f"unknown worker state {name}={value!r}")
        if self.cause not in CAUSES:
            raise ValueError(f"unknown cause {self.cause!r}")
        if self.product is not None and self.product not in PRODUCTS:
            raise ValueError(f"unknown product {self.product!r}")

    @classmethod
    def from_event(cls, event_id: str, time_ms: int, data: Mapping[str, Any]) -> StateChange:
        """From a decoded event: its envelope ``id``, envelope ``time`` (see ``epoch_ms``) and
        ``data`` (already validated against the schema)."""
        kind = data.get("kind")
        if kind is not None and kind not in PRODUCTS:
            raise ValueError(f"unknown product {kind!r}")
        product: Product | None = "ride" if kind == "ride" else "delivery" if kind else None
        return cls(
            event_id=event_id,
            driver_id=data["driver_id"],
            seq=data["seq"],
            at_ms=time_ms,
            from_=data["from"],
            to=data["to"],
            cause=data["cause"],
            order_id=data.get("order_id"),
            trip_id=data.get("trip_id"),
            offer_id=data.get("offer_id"),
            product=product,
        )


Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Timeline:
    """One worker's segments, sorted, exclusive and gap-free within each session.

    ``gaps`` are the missing ``seq`` numbers as inclusive ranges; ``sessions`` are the stretches
    the worker was signed in (online or on break: from going online, or from coming back after a
    silence, to going offline, the last sign of life before a silence, or ``until_ms``); every
    millisecond of a session lies in exactly one segment. ``last_state`` is the state at the
    cut-off as billing sees it (``offline`` after a silence). ``conflicts`` are ``seq`` numbers
    seen under more than one event id (a producer fault; the earliest is used).
    """

    driver_id: str
    segments: tuple[Segment, ...]
    gaps: tuple[Span, ...] = ()
    last_state: str = OFFLINE
    sessions: tuple[Span, ...] = ()
    conflicts: tuple[int, ...] = ()

    @property
    def provisional(self) -> bool:
        """Changes are missing (or contradict each other): the figures may still move."""
        return bool(self.gaps or self.conflicts)

    def clip(self, start_ms: int, end_ms: int) -> Timeline:
        """The part of the timeline in ``[start_ms, end_ms)`` (a statement's day or week).

        A cut segment keeps the share of its ``distance_m`` that its kept time is of its whole
        time (no metre counted in two periods); one cut at the period's end is no longer marked
        inferred: the inference was about its end, which the period does not hold.
        """
        if end_ms < start_ms:
            raise ValueError("period ends before it starts")
        segments = []
        for s in self.segments:
            lo, hi = max(s.start_ms, start_ms), min(s.end_ms, end_ms)
            if lo < hi:
                cut = (lo, hi) != (s.start_ms, s.end_ms)
                segments.append(_cut(s, lo, hi) if cut else s)
        sessions = tuple(
            (max(a, start_ms), min(b, end_ms))
            for a, b in self.sessions
            if max(a, start_ms) < min(b, end_ms)
        )
        return replace(self, segments=tuple(segments), sessions=sessions)

    def totals_ms(self) -> dict[SegmentKind, int]:
        """Milliseconds per segment kind, every kind present."""
        totals = dict.fromkeys(SegmentKind, 0)
        for s in self.segments:
            totals[s.kind] += s.duration_ms
        return totals

    def ms_in(self, kinds: Iterable[SegmentKind]) -> int:
        wanted = frozenset(kinds)
        return sum(s.duration_ms for s in self.segments if s.kind in wanted)

    @property
    def online_ms(self) -> int:
        """Online time for pay: every segment but breaks."""
        return self.ms_in(ONLINE)

    @property
    def waiting_ms(self) -> int:
        """idle + offered + at_pickup (both parts) + at_dropoff (issue 4, statement)."""
        return self.ms_in(WAITING)

    @property
    def break_ms(self) -> int:
        return self.ms_in((K.BREAK,))

    @property
    def engaged_ms(self) -> int:
        return self.ms_in(ENGAGED)

    @property
    def p1_ms(self) -> int:
        return self.ms_in(P1)

    @property
    def p2_ms(self) -> int:
        return self.ms_in(P2)

    @property
    def p3_ms(self) -> int:
        return self.ms_in(P3)


def _cut(s: Segment, lo: int, hi: int) -> Segment:
    share = (hi - lo) / s.duration_ms
    return replace(
        s,
        start_ms=lo,
        end_ms=hi,
        inferred=s.inferred and hi == s.end_ms,
        distance_m=s.distance_m * share,
    )


class TimelineInvariantError(ValueError):
    """A timeline that is not exclusive and gap-free."""


def invariant_violations(timeline: Timeline) -> list[str]:
    """What breaks "every signed-in millisecond lies in exactly one segment", if anything.

    Checked: each segment belongs to the timeline's driver and lasts at least 1 ms; segments
    are sorted and never overlap; sessions are sorted and never overlap; each session is
    covered by its segments from its first to its last millisecond with no gap; no segment lies
    outside a session; an inferred segment ends its session.
    """
    problems: list[str] = []
    segs = timeline.segments
    for s in segs:
        if s.driver_id != timeline.driver_id:
            problems.append(f"segment of another driver: {s}")
        if s.duration_ms <= 0:
            problems.append(f"empty segment: {s}")
    for a, b in zip(segs, segs[1:], strict=False):
        if b.start_ms < a.end_ms:
            problems.append(f"segments overlap or are unsorted: {a} / {b}")
    sessions = timeline.sessions
    for (a0, a1), (b0, b1) in zip(sessions, sessions[1:], strict=False):
        if b0 < a1:
            problems.append(f"sessions overlap or are unsorted: {(a0, a1)} / {(b0, b1)}")
    k = 0  # segments and sessions are walked together: linear in both
    for s0, s1 in sessions:
        if s1 <= s0:
            problems.append(f"empty session: {(s0, s1)}")
            continue
        while k < len(segs) and segs[k].end_ms <= s0:
            problems.append(f"segment outside every session: {segs[k]}")
            k += 1
        cursor = s0
        while k < len(segs) and segs[k].start_ms < s1:
            s = segs[k]
            if s.start_ms != cursor:
                problems.append(f"session {(s0, s1)} not covered exactly at {cursor}: {s}")
            if s.end_ms > s1:
                problems.append(f"segment runs past its session's end {s1}: {s}")
            if s.inferred and s.end_ms != s1:
                problems.append(f"inferred segment does not end its session: {s}")
            cursor = s.end_ms
            k += 1
        if cursor < s1:
            problems.append(f"session {(s0, s1)} not covered in [{cursor}, {s1})")
    problems.extend(f"segment outside every session: {s}" for s in segs[k:])
    return problems


def check_exclusive_and_gap_free(timeline: Timeline) -> None:
    """Raise ``TimelineInvariantError`` listing every violation (see ``invariant_violations``)."""
    problems = invariant_violations(timeline)
    if problems:
        raise TimelineInvariantError("; ".join(problems))


# --- building ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stretch:
    """One known state between two changes (or a change and the cut-off)."""

    state: str
    start_ms: int
    end_ms: int
    order_id: str | None
    trip_id: str | None
    offer_id: str | None
    product: Product | None
    closed_by_change: bool  # False for the last one, which runs to the cut-off


def build_timeline(
    changes: Iterable[StateChange],
    *,
    until_ms: int,
    last_sign_of_life_ms: int | None,
    silence_timeout_ms: int,
    grace_ms: Callable[[Product | None], int],
    signs_of_life_ms: Iterable[int] | None = None,
    driver_id: str | None = None,
) -> Timeline:
    """The timeline of one driver as of ``until_ms`` (see the module's rules).

    ``last_sign_of_life_ms`` is the server time of the worker's latest event or ping (``None``:
    its latest change). ``signs_of_life_ms`` (optional) are server times of its pings (a subset
    suffices as long as it leaves no hole longer than ``silence_timeout_ms`` that the full set
    does not have, e.g. the first ping of every minute); with them silences inside the history
    are found too. ``driver_id`` names the driver when ``changes`` is empty.
    """
    if silence_timeout_ms < 0:
        raise ValueError("silence_timeout_ms must not be negative")
    chosen, conflicts, driver = _deduplicate(changes, until_ms, driver_id)
    ordered = sorted(chosen, key=lambda c: (c.at_ms, c.seq))
    stretches = _stretches(ordered, until_ms)
    signs = _signs(ordered, until_ms, last_sign_of_life_ms, signs_of_life_ms)
    sessions, pieces = _sessions(stretches, signs, silence_timeout_ms, signs_of_life_ms is not None)
    segments = tuple(
        seg
        for stretch, lo, hi, inferred in _intersect(stretches, pieces)
        for seg in _segments_of(driver, stretch, lo, hi, inferred, grace_ms)
    )
    silent_at_end = bool(signs) and signs[-1] + silence_timeout_ms < until_ms
    last_state = ordered[-1].to if ordered and not silent_at_end else OFFLINE
    return Timeline(
        driver_id=driver,
        segments=segments,
        gaps=_gaps(c.seq for c in ordered),
        last_state=last_state,
        sessions=sessions,
        conflicts=conflicts,
    )


def _deduplicate(
    changes: Iterable[StateChange], until_ms: int, driver_id: str | None
) -> tuple[list[StateChange], tuple[int, ...], str]:
    """One change per event id and per seq, chosen by content, never by arrival order."""
    by_id: dict[str, StateChange] = {}
    for c in changes:
        if driver_id is None:
            driver_id = c.driver_id
        elif c.driver_id != driver_id:
            raise ValueError(f"changes of two drivers: {driver_id!r} and {c.driver_id!r}")
        seen = by_id.get(c.event_id)
        if seen is None or _content_key(c) < _content_key(seen):
            by_id[c.event_id] = c
    if driver_id is None:
        raise ValueError("no changes and no driver_id")
    by_seq: dict[int, StateChange] = {}
    conflicts: set[int] = set()
    for c in by_id.values():
        if c.at_ms > until_ms:
            continue
        seen = by_seq.get(c.seq)
        if seen is not None:
            conflicts.add(c.seq)
        if seen is None or (c.at_ms, c.event_id) < (seen.at_ms, seen.event_id):
            by_seq[c.seq] = c
    return list(by_seq.values()), tuple(sorted(conflicts)), driver_id


def _content_key(c: StateChange) -> tuple[int, int, str]:
    # The same id with different content is a producer fault; any fixed choice keeps builds
    # order-independent.
    return (c.at_ms, c.seq, repr(c))


def _gaps(seqs: Iterable[int]) -> tuple[Span, ...]:
    gaps: list[Span] = []
    expected = 1
    for seq in sorted(set(seqs)):
        if seq > expected:
            gaps.append((expected, seq - 1))
        expected = seq + 1
    return tuple(gaps)


def _stretches(ordered: list[StateChange], until_ms: int) -> list[_Stretch]:
    """Each change's ``to`` state until the next change; offline states are left out.

    Ids missing from a change inside the same order are carried from the state before (the
    offer an accepted trip came from, for per-offer pay rules).
    """
    stretches: list[_Stretch] = []
    prev: _Stretch | None = None
    for i, c in enumerate(ordered):
        end = ordered[i + 1].at_ms if i + 1 < len(ordered) else until_ms
        state = c.to
        order_id, trip_id, offer_id, product = c.order_id, c.trip_id, c.offer_id, c.product
        if (
            prev is not None
            and state in _ENGAGED_STATES
            and prev.state in _ENGAGED_STATES | {"offered"}
            and order_id is not None
            and prev.order_id == order_id
        ):
            trip_id = trip_id or prev.trip_id
            offer_id = offer_id or prev.offer_id
            product = product or prev.product
        if state not in _ENGAGED_STATES and state != "offered":
            order_id = trip_id = offer_id = product = None
        elif state == "offered":
            trip_id = None
        stretch = _Stretch(
            state, c.at_ms, end, order_id, trip_id, offer_id, product, i + 1 < len(ordered)
        )
        if state != OFFLINE:
            stretches.append(stretch)
        prev = stretch
    return stretches


def _signs(
    ordered: list[StateChange],
    until_ms: int,
    last_sign_of_life_ms: int | None,
    signs_of_life_ms: Iterable[int] | None,
) -> list[int]:
    signs = {c.at_ms for c in ordered}
    if last_sign_of_life_ms is not None:
        signs.add(min(last_sign_of_life_ms, until_ms))
    if signs_of_life_ms is not None:
        signs.update(t for t in signs_of_life_ms if t <= until_ms)
    return sorted(signs)


# A piece of a session in which the worker was alive: (start, end, closed by inference).
_Piece = tuple[int, int, bool]


def _sessions(
    stretches: list[_Stretch], signs: list[int], timeout_ms: int, inside: bool
) -> tuple[tuple[Span, ...], list[_Piece]]:
    """Signed-in sessions (consecutive online stretches), cut where the worker went silent."""
    pieces: list[_Piece] = []
    i = 0
    while i < len(stretches):
        j = i
        while j + 1 < len(stretches) and stretches[j + 1].start_ms == stretches[j].end_ms:
            j += 1
        start, end = stretches[i].start_ms, stretches[j].end_ms
        open_tail = not stretches[j].closed_by_change
        pieces += _alive(start, end, open_tail, signs, timeout_ms, inside)
        i = j + 1
    return tuple((a, b) for a, b, _ in pieces), pieces


def _alive(
    start: int, end: int, open_tail: bool, signs: list[int], timeout_ms: int, inside: bool
) -> list[_Piece]:
    """``[start, end)`` cut where no sign of life came for longer than ``timeout_ms``.

    A session ended by a change (going offline) is silent before it only if ``inside``; one
    open at the cut-off is silent when its last sign of life is older than the timeout.
    """
    lo, hi = bisect.bisect_right(signs, start), bisect.bisect_left(signs, end)
    pieces: list[_Piece] = []
    piece_start = last = start
    for t in signs[lo:hi]:
        if inside and t - last > timeout_ms:
            pieces.append((piece_start, last, True))
            piece_start = t
        last = t
    alive_at_end = hi < len(signs)  # a sign at the cut-off (or the change that ends the session)
    if open_tail:
        silent = not alive_at_end and last + timeout_ms < end
    else:
        silent = inside and end - last > timeout_ms
    pieces.append((piece_start, last, True) if silent else (piece_start, end, False))
    return [p for p in pieces if p[1] > p[0]]


def _intersect(
    stretches: list[_Stretch], pieces: list[_Piece]
) -> Iterable[tuple[_Stretch, int, int, bool]]:
    """Each stretch cut to the alive pieces (both sorted and non-overlapping)."""
    k = 0
    for stretch in stretches:
        while k < len(pieces) and pieces[k][1] <= stretch.start_ms:
            k += 1
        m = k
        while m < len(pieces) and pieces[m][0] < stretch.end_ms:
            p0, p1, inferred = pieces[m]
            lo, hi = max(stretch.start_ms, p0), min(stretch.end_ms, p1)
            if lo < hi:
                yield stretch, lo, hi, inferred and hi == p1
            m += 1


def _segments_of(
    driver_id: str,
    stretch: _Stretch,
    lo: int,
    hi: int,
    inferred: bool,
    grace_ms: Callable[[Product | None], int],
) -> Iterable[Segment]:
    def segment(kind: SegmentKind, a: int, b: int, closes: bool) -> Segment:
        return Segment(
            driver_id=driver_id,
            kind=kind,
            start_ms=a,
            end_ms=b,
            trip_id=stretch.trip_id,
            order_id=stretch.order_id,
            offer_id=stretch.offer_id,
            product=stretch.product,
            inferred=inferred and closes,
        )

    if stretch.state != AT_PICKUP:
        yield segment(_KIND_OF_STATE[stretch.state], lo, hi, True)
        return
    # The stretch starts with the arrival; a silence cuts its pieces, not the grace clock.
    grace_end = stretch.start_ms + grace_ms(stretch.product)
    if lo < grace_end:
        yield segment(K.AT_PICKUP_WITHIN_GRACE, lo, min(hi, grace_end), hi <= grace_end)
    if hi > grace_end:
        yield segment(K.AT_PICKUP_BEYOND_GRACE, max(lo, grace_end), hi, True)
