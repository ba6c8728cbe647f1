"""The operator's waiting report: P-phase and waiting shares, paid and unpaid waiting, grouped
by worker, by hour (UTC) or by H3 res-8 cell (where the worker's pings were)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from polder.billing.domain.policies_base import PayClass
from polder.billing.domain.segments import P1, P2, P3, WAITING, Segment

MS_PER_HOUR = 3_600_000


@dataclass
class Tally:
    online_ms: int = 0
    p1_ms: int = 0
    p2_ms: int = 0
    p3_ms: int = 0
    waiting_ms: int = 0
    paid_waiting_ms: int = 0
    workers: set[str] = field(default_factory=set)

    def add(self, segment: Segment, ms: int, paid: bool) -> None:
        if segment.kind in P1:
            self.p1_ms += ms
        elif segment.kind in P2:
            self.p2_ms += ms
        elif segment.kind in P3:
            self.p3_ms += ms
        else:
            return  # a break is not online time
        self.online_ms += ms
        if segment.kind in WAITING:
            self.waiting_ms += ms
            if paid:
                self.paid_waiting_ms += ms
        self.workers.add(segment.driver_id)

    def to_dict(self) -> dict[str, float | int]:
        online = self.online_ms or 1
        return {
            "workers": len(self.workers),
            "online_s": self.online_ms / 1000,
            "p1_s": self.p1_ms / 1000,
            "p2_s": self.p2_ms / 1000,
            "p3_s": self.p3_ms / 1000,
            "p1_share": round(self.p1_ms / online, 6) if self.online_ms else 0.0,
            "p2_share": round(self.p2_ms / online, 6) if self.online_ms else 0.0,
            "p3_share": round(self.p3_ms / online, 6) if self.online_ms else 0.0,
            "waiting_share": round(self.waiting_ms / online, 6) if self.online_ms else 0.0,
            "paid_waiting_h": round(self.paid_waiting_ms / MS_PER_HOUR, 6),
            "unpaid_waiting_h": round((self.waiting_ms - self.paid_waiting_ms) / MS_PER_HOUR, 6),
        }


Classify = Callable[[Segment], PayClass]


def by_worker(segments: Iterable[Segment], classify: Classify) -> dict[str, Tally]:
    groups: dict[str, Tally] = defaultdict(Tally)
    for s in segments:
        groups[s.driver_id].add(s, s.duration_ms, classify(s) is PayClass.PAID)
    return dict(groups)


def by_hour(segments: Iterable[Segment], classify: Classify) -> dict[int, Tally]:
    """Keyed by the start of the UTC hour (epoch ms); a segment is split at hour boundaries."""
    groups: dict[int, Tally] = defaultdict(Tally)
    for s in segments:
        paid = classify(s) is PayClass.PAID
        t = s.start_ms
        while t < s.end_ms:
            hour = t - t % MS_PER_HOUR
            stop = min(s.end_ms, hour + MS_PER_HOUR)
            groups[hour].add(s, stop - t, paid)
            t = stop
    return dict(groups)


def by_cell(
    segments: Iterable[Segment],
    pings: Mapping[str, Sequence[tuple[int, int]]],
    classify: Classify,
) -> dict[int | None, Tally]:
    """``pings`` per worker: (server time ms, cell) sorted by time. Each stretch of a segment is
    put in the cell of the worker's latest ping at or before it; ``None`` before any ping."""
    groups: dict[int | None, Tally] = defaultdict(Tally)
    for s in segments:
        paid = classify(s) is PayClass.PAID
        trace = pings.get(s.driver_id, ())
        times = [t for t, _ in trace]
        i = bisect.bisect_right(times, s.start_ms) - 1
        t = s.start_ms
        while t < s.end_ms:
            cell = trace[i][1] if i >= 0 else None
            stop = min(s.end_ms, times[i + 1]) if i + 1 < len(times) else s.end_ms
            if stop > t:
                groups[cell].add(s, stop - t, paid)
            t = max(t, stop)
            i += 1
    return dict(groups)


def overall(segments: Iterable[Segment], classify: Classify) -> Tally:
    tally = Tally()
    for s in segments:
        tally.add(s, s.duration_ms, classify(s) is PayClass.PAID)
    return tally
