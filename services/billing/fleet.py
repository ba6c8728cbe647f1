"""The fleet's last hour as Prometheus gauges: where the workers' online time went (P1/P2/P3),
paid and unpaid waiting, unpaid waiting as a share of online time, and earnings per online
hour under each pay policy. Recomputed every minute from the same timelines and policies the
statements use, for the workers dashboard and the unpaid-waiting alert (deploy/).

Labels are bounded: phases, yes/no, policies and currencies, never a worker."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from polder.billing.domain.policies import get_policy
from polder.billing.domain.report import overall
from polder.billing.domain.segments import Segment
from polder.billing.domain.statement import Statement, share_below_floor
from polder.billing.metrics import BillingMetrics
from polder.billing.statements import Reports
from polder.common.db import leadership
from polder.common.tasks import wait_for_event

log = structlog.get_logger(__name__)

WINDOW = timedelta(hours=1)
MS_PER_HOUR = 3_600_000


@dataclass(frozen=True, slots=True)
class PolicyHour:
    currency: str
    earnings_per_online_hour_minor: float | None  # tips excluded, as in the statements
    below_floor_share: float | None


@dataclass(frozen=True, slots=True)
class FleetHour:
    p1_s: float
    p2_s: float
    p3_s: float
    paid_waiting_s: float
    unpaid_waiting_s: float
    unpaid_waiting_ratio: float  # of online time
    policies: Mapping[str, PolicyHour]


def summarize(
    policy: str, segments: Sequence[Segment], by_policy: Mapping[str, Sequence[Statement]]
) -> FleetHour:
    """Pure: the fleet figures from every worker's segments and statements over the window."""
    tally = overall(segments, get_policy(policy).classify)
    unpaid_ms = tally.waiting_ms - tally.paid_waiting_ms
    below = share_below_floor(s for statements in by_policy.values() for s in statements)
    policies: dict[str, PolicyHour] = {}
    for name, statements in by_policy.items():
        if not statements:
            continue
        online_ms = sum(s.time.online_ms for s in statements)
        earned = sum(s.total_minor - s.tips_minor for s in statements)
        rate = earned * MS_PER_HOUR / online_ms if online_ms else None
        share = below.get(statements[0].policy)
        policies[name] = PolicyHour(statements[0].currency, rate, share)
    return FleetHour(
        p1_s=tally.p1_ms / 1000,
        p2_s=tally.p2_ms / 1000,
        p3_s=tally.p3_ms / 1000,
        paid_waiting_s=tally.paid_waiting_ms / 1000,
        unpaid_waiting_s=unpaid_ms / 1000,
        unpaid_waiting_ratio=unpaid_ms / tally.online_ms if tally.online_ms else 0.0,
        policies=policies,
    )


def publish(hour: FleetHour, metrics: BillingMetrics) -> None:
    metrics.fleet_phase.labels("P1").set(hour.p1_s)
    metrics.fleet_phase.labels("P2").set(hour.p2_s)
    metrics.fleet_phase.labels("P3").set(hour.p3_s)
    metrics.fleet_waiting.labels("yes").set(hour.paid_waiting_s)
    metrics.fleet_waiting.labels("no").set(hour.unpaid_waiting_s)
    metrics.unpaid_waiting_ratio.set(hour.unpaid_waiting_ratio)
    metrics.fleet_earnings.clear()  # a policy that no longer applies must not linger
    metrics.fleet_below_floor.clear()
    for name, p in hour.policies.items():
        if p.earnings_per_online_hour_minor is not None:
            metrics.fleet_earnings.labels(name, p.currency).set(p.earnings_per_online_hour_minor)
        if p.below_floor_share is not None:
            metrics.fleet_below_floor.labels(name).set(p.below_floor_share)


async def run(
    reports: Reports,
    metrics: BillingMetrics,
    stop: asyncio.Event,
    lock: str,
    every_s: float = 60.0,
) -> None:
    """Every ``every_s``, the last hour of the fleet into the gauges, until ``stop``. One
    replica computes (the holder of ``lock``): the figures are the fleet's, not a replica's,
    and a recount per replica would only multiply the load."""
    async with leadership(reports.statements.pool, lock, stop) as held:
        while held and not stop.is_set():
            now = datetime.now(UTC)
            try:
                gathered = await reports.gather(now - WINDOW, now, now)
                publish(summarize(gathered.policy, gathered.segments, gathered.by_policy), metrics)
            except Exception:  # the database may be down: the gauges keep their last values
                log.exception("fleet figures failed; retrying at the next interval")
            await wait_for_event(stop, every_s)
