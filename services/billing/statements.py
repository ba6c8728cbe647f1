"""Statements and trip fares, computed on request from the stored facts with the pure domain."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import h3.api.basic_int as h3

from polder.billing.domain.distance import (
    ClockEstimate,
    Leg,
    Ping,
    TripDistance,
    batch_clock_offsets_ms,
    engaged_distance,
    on_server_clock,
)
from polder.billing.domain.policies import PolicyName, from_ms, get_policy
from polder.billing.domain.policies_base import TripRecord
from polder.billing.domain.policies_rates import RateBook
from polder.billing.domain.report import Tally, by_cell, by_hour, by_worker, overall
from polder.billing.domain.segments import Product, Segment
from polder.billing.domain.statement import (
    Statement,
    build_statement,
    share_below_floor,
    unpaid_waiting_gini,
)
from polder.billing.domain.timeline import build_timeline, epoch_ms
from polder.billing.domain.trips import Trip, trip_from_changes
from polder.billing.facts import change_from_row, load_trip_facts
from polder.common import timerange
from polder.common.db import Pool
from polder.common.errors import ApiError
from polder.common.settings import Settings
from polder.fares.money import CurrencyMismatch
from polder.fares.tariff import TariffBook

# How far before a statement's start the history is read, to know the state the worker was in.
LOOKBACK = timedelta(days=2)
# How a device's clock is placed on the server's, batch by batch (retention places them alike).
CLOCK = ClockEstimate()
# Pings received this long after a statement's end still tell the device clock's offset at its
# last batches (the neighbours ``CLOCK`` looks at): the offsets do not depend on where a range
# ends, and are the ones retention measured legs with.
CLOCK_LOOKAHEAD = timedelta(milliseconds=CLOCK.neighbours * CLOCK.max_gap_ms)
ALL_POLICIES = [p.value for p in PolicyName]


@dataclass(frozen=True, slots=True)
class TripView:
    trip: Trip
    driver_id: str
    customer_id: str


class PolicyNotApplicable(ApiError):
    def __init__(self, policy: str, reason: Exception) -> None:
        super().__init__(
            422, "policy_not_applicable", f"policy {policy!r} has no rates here: {reason}"
        )
        self.policy = policy


class Statements:
    def __init__(
        self, pool: Pool, tariffs: TariffBook, rates: RateBook, settings: Settings
    ) -> None:
        self.pool = pool
        self.tariffs = tariffs
        self.rates = rates
        self.settings = settings

    def grace_ms(self, product: Product | None, at: datetime) -> int:
        tariff = self.tariffs.get(self.settings.city, product or "ride", at)
        return tariff.wait_grace_s * 1000

    async def statement(
        self, driver_id: str, start: datetime, end: datetime, policy: str, now: datetime
    ) -> Statement:
        statement, _, _ = await self.compute(driver_id, start, end, [policy], now)
        return statement[0]

    async def compute(
        self, driver_id: str, start: datetime, end: datetime, policies: list[str], now: datetime
    ) -> tuple[list[Statement], tuple[Segment, ...], list[tuple[int, int]]]:
        """Statements under each policy, the worker's segments in the range, and its pings as
        (server time ms, res-8 cell), from one read of its history."""
        rows = await self.pool.fetch(
            "SELECT event_id, at, data FROM driver_events WHERE driver_id = $1 "
            "AND at >= $2 AND at < $3 ORDER BY at, seq",
            driver_id,
            start - LOOKBACK,
            end,
        )
        changes = [change_from_row(r) for r in rows]
        # received_ms: epoch_ms() of received_at, computed by Postgres (exact: extract(epoch)
        # is numeric; floor as epoch_ms floors), a month of pings is ~150 000 rows
        # Pings past retention are marks (no position) and their legs were measured before
        # the positions went (billing.retention): the same statement either way.
        clock_rows = await self.pool.fetch(
            "SELECT recorded_at_ms, floor(extract(epoch FROM received_at) * 1000)::bigint "
            "AS received_ms, lat, lng, accuracy_m, cell8, received_at < $3 AS in_range "
            "FROM pings WHERE driver_id = $1 AND received_at >= $2 AND received_at < $4 "
            "UNION ALL "
            "SELECT recorded_at_ms, floor(extract(epoch FROM received_at) * 1000)::bigint, "
            "NULL, NULL, accuracy_m, cell8, received_at < $3 FROM ping_marks "
            "WHERE driver_id = $1 AND received_at >= $2 AND received_at < $4 "
            "ORDER BY recorded_at_ms",
            driver_id,
            start - LOOKBACK,
            end,
            end + CLOCK_LOOKAHEAD,
        )
        ping_rows = [r for r in clock_rows if r["in_range"]]
        leg_rows = await self.pool.fetch(
            "SELECT start_ms, end_ms, distance_m FROM ping_legs "
            "WHERE driver_id = $1 AND received_at >= $2 AND received_at < $3",
            driver_id,
            start - LOOKBACK,
            end,
        )
        until = min(end, now)
        signs = [r["received_ms"] for r in ping_rows]
        last_sign = max([*signs, *(c.at_ms for c in changes)], default=None)
        timeline = build_timeline(
            changes,
            until_ms=epoch_ms(until),
            last_sign_of_life_ms=last_sign,
            silence_timeout_ms=int(self.settings.billing_silence_timeout_s * 1000),
            grace_ms=lambda product: self.grace_ms(product, until),
            signs_of_life_ms=signs,
            driver_id=driver_id,
        )
        # Phones' clocks drift, and are set back or forward mid-shift: each batch's pings are
        # placed on the server's clock with that batch's offset before measuring. Legs measured
        # before retention are on the server's clock already.
        offsets = batch_clock_offsets_ms(
            ((r["received_ms"], r["recorded_at_ms"]) for r in clock_rows), CLOCK
        )
        measured = engaged_distance(
            timeline.segments,
            on_server_clock(
                (
                    (
                        r["received_ms"],
                        Ping(r["recorded_at_ms"], r["lat"], r["lng"], r["accuracy_m"]),
                    )
                    for r in ping_rows
                    if r["lat"] is not None
                ),
                offsets,
            ),
            measured=[Leg(r["start_ms"], r["end_ms"], r["distance_m"]) for r in leg_rows],
        )
        start_ms, end_ms = epoch_ms(start), epoch_ms(end)
        segments = replace(timeline, segments=measured.segments).clip(start_ms, end_ms).segments
        trips = [
            _with_measured(t.trip.record, measured.trips.get(t.trip.trip_id))
            for t in await self._trips(changes)
        ]
        currency = self.tariffs.get(self.settings.city, "ride", until).currency
        jurisdiction = self.rates.jurisdiction_of_city(self.settings.city).id
        statements = []
        for policy in policies:
            try:
                statements.append(
                    build_statement(
                        driver_id,
                        start_ms,
                        end_ms,
                        policy,
                        segments,
                        trips,
                        self.rates,
                        currency,
                        jurisdiction=jurisdiction,
                    )
                )
            except (KeyError, CurrencyMismatch) as exc:
                # no rates for this record and no reference rate to convert them (domain.fx)
                raise PolicyNotApplicable(policy, exc) from exc
        pings = [(r["received_ms"], r["cell8"]) for r in ping_rows]
        return statements, segments, pings

    async def _trips(self, changes: list[Any]) -> list[TripView]:
        views = await self.trips(sorted({c.trip_id for c in changes if c.trip_id}))
        return list(views.values())

    async def trip(self, trip_id: uuid.UUID) -> TripView | None:
        return (await self.trips([str(trip_id)])).get(str(trip_id))

    async def trips(self, trip_ids: list[str]) -> dict[str, TripView]:
        """The ended trips among ``trip_ids``, in four queries whatever their number."""
        if not trip_ids:
            return {}
        facts = await load_trip_facts(self.pool, trip_ids)
        views: dict[str, TripView] = {}
        for trip_id in facts.changes:
            inputs = facts.inputs(trip_id, self.tariffs)
            if inputs is None:
                continue
            trip = trip_from_changes(
                trip_id,
                inputs.changes,
                inputs.order,
                inputs.tariff,
                no_show=inputs.no_show,
                promised_eta_s=inputs.promised_eta_s,
            )
            if trip is not None:
                views[trip_id] = TripView(trip, trip.driver_id, inputs.order.customer_id)
        return views


STATEMENT_MAX_SPAN = timedelta(days=62)


def parse_range(start: str | None, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """A statement's ``from``/``to``: by default the current UTC day, at most 62 days."""
    return timerange.parse_range(start, end, now, STATEMENT_MAX_SPAN)


def _with_measured(record: TripRecord, measured: TripDistance | None) -> TripRecord:
    """Distances driven as the pings tell them, where there are pings; else the quote's."""
    if measured is None or measured.engaged_m <= 0:
        return record
    return replace(record, p3_distance_m=measured.p3_m, engaged_distance_m=measured.engaged_m)


@dataclass(frozen=True)
class Gathered:
    """What the reports read: the default policy, the workers, their segments and pings, and
    each worker's statement under every policy that applies."""

    policy: str
    drivers: list[str]
    segments: list[Segment]
    pings: dict[str, list[tuple[int, int]]]
    by_policy: dict[str, list[Statement]]


class Reports:
    """The operator's waiting report over every worker active in a range."""

    def __init__(self, statements: Statements, max_workers: int = 5_000) -> None:
        self.statements = statements
        self.max_workers = max_workers

    async def gather(self, start: datetime, end: datetime, now: datetime) -> Gathered:
        """Every worker active in the range: their segments, pings and a statement under each
        policy that applies (one read of each worker's history for all of them)."""
        st = self.statements
        drivers = [
            r["driver_id"]
            for r in await st.pool.fetch(
                "SELECT DISTINCT driver_id FROM driver_events WHERE at >= $1 AND at < $2 "
                "ORDER BY driver_id LIMIT $3",
                start - LOOKBACK,
                end,
                self.max_workers,
            )
        ]
        default = st.settings.default_policy
        segments: list[Segment] = []
        pings: dict[str, list[tuple[int, int]]] = {}
        by_policy: dict[str, list[Statement]] = {}
        others = [p for p in ALL_POLICIES if p != default]
        for driver in drivers:
            try:  # one read of the worker's history for every policy
                statements, segs, trace = await st.compute(
                    driver, start, end, [default, *others], now
                )
                found = dict(zip([default, *others], statements, strict=True))
            except PolicyNotApplicable:  # some policy has no rates here: each on its own
                statements, segs, trace = await st.compute(driver, start, end, [default], now)
                found = {default: statements[0]}
                for policy in others:
                    try:
                        [found[policy]], _, _ = await st.compute(driver, start, end, [policy], now)
                    except PolicyNotApplicable:
                        continue  # no rates to compare against, not even converted
            segments += segs
            pings[driver] = trace
            for policy, statement in found.items():
                by_policy.setdefault(policy, []).append(statement)
        return Gathered(default, drivers, segments, pings, by_policy)

    async def waiting(
        self, start: datetime, end: datetime, group_by: str, now: datetime
    ) -> dict[str, Any]:
        g = await self.gather(start, end, now)
        default, drivers, segments, pings, by_policy = (
            g.policy,
            g.drivers,
            g.segments,
            g.pings,
            g.by_policy,
        )
        classify = get_policy(default).classify
        groups: Mapping[Any, Tally]
        if group_by == "driver":
            groups = by_worker(segments, classify)
        elif group_by == "hour":
            groups = {
                from_ms(k).isoformat(): v for k, v in sorted(by_hour(segments, classify).items())
            }
        else:
            groups = {
                (h3.int_to_str(k) if k is not None else "unknown"): v
                for k, v in by_cell(segments, pings, classify).items()
            }
        below: dict[str, float] = {}
        for statements in by_policy.values():
            below.update({str(k): v for k, v in share_below_floor(statements).items()})
        return {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "group_by": group_by,
            "policy": default,
            "workers": len(drivers),
            "totals": overall(segments, classify).to_dict(),
            "groups": [{"key": str(k), **v.to_dict()} for k, v in groups.items()],
            "below_floor_share": below,
            "unpaid_waiting_gini": round(unpaid_waiting_gini(by_policy.get(default, [])), 6),
        }
