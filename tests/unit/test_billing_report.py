from polder.billing.domain.policies import get_policy
from polder.billing.domain.report import MS_PER_HOUR, by_cell, by_hour, by_worker
from polder.billing.domain.segments import Segment, SegmentKind

K = SegmentKind
NL = get_policy("nl_hourly").classify  # all online time paid
PROP22 = get_policy("prop22").classify  # engaged time paid: P1 idle is unpaid waiting


def seg(driver: str, kind: SegmentKind, start_s: int, end_s: int) -> Segment:
    return Segment(driver, kind, start_s * 1000, end_s * 1000)


SHIFT = [
    seg("a", K.IDLE, 0, 1800),
    seg("a", K.EN_ROUTE_PICKUP, 1800, 2100),
    seg("a", K.AT_PICKUP_WITHIN_GRACE, 2100, 2220),
    seg("a", K.ON_TRIP, 2220, 3300),
    seg("a", K.BREAK, 3300, 3600),
    seg("a", K.IDLE, 3600, 4200),
    seg("b", K.IDLE, 0, 3600),
]


def test_by_worker_counts_phases_and_waiting_per_policy() -> None:
    a = by_worker(SHIFT, PROP22)["a"].to_dict()
    # online = everything but the break: 3300 + 600 s
    assert a["online_s"] == 3900
    assert (a["p1_s"], a["p2_s"], a["p3_s"]) == (2400, 420, 1080)
    # waiting = idle 2400 + at pickup 120 s; Prop 22 pays the engaged wait at pickup only
    assert a["paid_waiting_h"] == round(120 / 3600, 6)
    assert a["unpaid_waiting_h"] == round(2400 / 3600, 6)
    b_nl = by_worker(SHIFT, NL)["b"].to_dict()
    assert b_nl["paid_waiting_h"] == 1.0 and b_nl["unpaid_waiting_h"] == 0.0


def test_by_hour_splits_segments_at_hour_boundaries() -> None:
    hours = by_hour(SHIFT, NL)
    assert sorted(hours) == [0, MS_PER_HOUR]
    first, second = hours[0].to_dict(), hours[MS_PER_HOUR].to_dict()
    # hour 0: a online 3300 s (break excluded) + b 3600 s; hour 1: a idle 600 s
    assert first["online_s"] == 3300 + 3600 and first["workers"] == 2
    assert second["online_s"] == 600 and second["workers"] == 1


def test_by_cell_follows_the_latest_ping() -> None:
    pings = {"a": [(600_000, 11), (2_000_000, 22)], "b": []}
    cells = by_cell(SHIFT[:1], pings, NL)
    # idle 0..1800 s: no ping before 600 s, then cell 11 (the ping at 2000 s is after the end)
    assert cells[None].online_ms == 600_000
    assert cells[11].online_ms == 1_200_000
    spanning = by_cell([seg("a", K.ON_TRIP, 1900, 2500)], pings, NL)
    assert spanning[11].online_ms == 100_000 and spanning[22].online_ms == 500_000
    assert sum(t.online_ms for t in by_cell(SHIFT, pings, NL).values()) == sum(
        t.online_ms for t in by_worker(SHIFT, NL).values()
    )
