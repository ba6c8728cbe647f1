"""report.json and report.md: the run's KPIs and the self-checks' verdict."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import orjson

from polder.simulator.agents import Sim
from polder.simulator.checks import CheckResult
from polder.simulator.observations import latencies, summary

P1 = ("idle_s", "offered_s")
P2 = ("en_route_pickup_s", "at_pickup_s")
P3 = ("on_trip_s", "at_dropoff_s")


def _sum(statements: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> float:
    return sum(float(s["time"][k]) for s in statements.values() for k in keys)


def time_shares(statements: dict[str, dict[str, Any]]) -> dict[str, Any]:
    online = sum(float(s["time"]["online_s"]) for s in statements.values())
    p = {name: _sum(statements, keys) for name, keys in (("p1", P1), ("p2", P2), ("p3", P3))}
    paid = sum(float(s["waiting"]["paid_s"]) for s in statements.values())
    unpaid = sum(float(s["waiting"]["unpaid_s"]) for s in statements.values())
    return {
        "online_h": round(online / 3600, 4),
        **{f"{k}_share": (round(v / online, 4) if online else None) for k, v in p.items()},
        "paid_waiting_h": round(paid / 3600, 4),
        "unpaid_waiting_h": round(unpaid / 3600, 4),
        "unpaid_waiting_share": round(unpaid / online, 4) if online else None,
    }


def earnings(result: CheckResult) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for policy, statements in result.by_policy.items():
        online = sum(float(s["time"]["online_s"]) for s in statements.values())
        total = sum(int(s["earnings"]["total_minor"]) for s in statements.values())
        currencies = sorted({s["earnings"]["currency"] for s in statements.values()})
        per_worker = [
            s["effective_hourly_minor"]["per_online_hour"]
            for s in statements.values()
            if s["effective_hourly_minor"]["per_online_hour"] is not None
        ]
        unpaid = sum(float(s["waiting"]["unpaid_s"]) for s in statements.values())
        out[policy] = {
            "currency": ",".join(currencies),
            "unpaid_waiting_h": round(unpaid / 3600, 4),
            "workers": len(statements),
            "per_online_hour_minor": round(total / (online / 3600)) if online else None,
            "worker_median_per_online_hour_minor": (
                statistics.median(per_worker) if per_worker else None
            ),
            "per_worker": {
                d: s["effective_hourly_minor"]["per_online_hour"] for d, s in statements.items()
            },
        }
    for policy, reason in result.not_comparable.items():
        out[policy] = {"not_comparable": reason}
    return out


def build(
    sim: Sim, result: CheckResult, options: dict[str, Any], batch_window_s: float
) -> dict[str, Any]:
    orders = sim.orders
    placed = [o for o in orders if o.order_id is not None]
    lat = latencies(orders)
    statuses: dict[str, int] = {}
    for o in placed:
        statuses[o.final_status or "unknown"] = statuses.get(o.final_status or "unknown", 0) + 1
    workers = sim.workers.values()
    mismatches = result.mismatches
    return {
        "run": {
            **options,
            "ids": f"{sim.prefix}-*",
            "batch_window_s": batch_window_s,
            "started_at": sim.wall0.isoformat(),
            "duration_s": round(sim.t(), 1),
        },
        "orders": {
            "placed": len(placed),
            "not_placed": len(orders) - len(placed),
            "rides": sum(1 for o in placed if o.kind == "ride"),
            "deliveries": sum(1 for o in placed if o.kind == "delivery"),
            "offered": sum(1 for o in placed if o.first_offer_t is not None),
            "matched": sum(1 for o in placed if o.accepted_t is not None),
            "completed": sum(1 for o in placed if o.completed_t is not None),
            "cancelled_by_customer": sum(
                1 for o in placed if o.cancelled_by_customer and not o.cancelled_at_end
            ),
            "cancelled_at_run_end": sum(1 for o in placed if o.cancelled_at_end),
            "cancelled_by_driver": sum(1 for o in placed if o.cancelled_by_driver),
            "expired": statuses.get("expired", 0),
            "final_status_in_dispatch": statuses,
        },
        "latency_s": {
            "order_to_offer": summary(lat["order_to_offer_s"]),
            # the part beyond dispatch's batch window (DESIGN §8's measure), clamped at 0
            "order_to_offer_beyond_window": summary(
                [max(0.0, x - batch_window_s) for x in lat["order_to_offer_s"]]
            ),
            # rides only: a delivery's first offer may wait on purpose for its ready_at
            "ride_to_offer_beyond_window": summary(
                [max(0.0, x - batch_window_s) for x in lat["ride_to_offer_s"]]
            ),
            "order_to_assignment": summary(lat["order_to_assignment_s"]),
        },
        "pickup": {
            "eta_s": summary(lat["pickup_eta_s"]),
            "drive_s": summary(lat["pickup_drive_s"]),
        },
        "workers": {
            "count": len(sim.workers),
            "went_online": sum(1 for w in workers if w.online),
            "offers": sum(w.offers for w in workers),
            "accepted": sum(w.accepted for w in workers),
            "declined": sum(w.declined for w in workers),
            "lost_offers": sum(w.lost for w in workers),
            "trips_completed": sum(w.trips_completed for w in workers),
            "pings_sent": sum(w.pings_sent for w in workers),
            "ping_batches_refused": sum(w.ping_errors for w in workers),
            "ping_batches_retried_offline": sum(w.ping_offline_retries for w in workers),
        },
        "time": time_shares(result.statements),
        "earnings_per_online_hour": earnings(result),
        "billing_lag_s": {
            "trip_completed_to_fare": summary(lat["fare_lag_s"]),
            "statement_check_waited": summary(result.statement_waited_s),
        },
        "waiting_report_totals": result.waiting_totals,
        "api": {"requests": sim.api.requests, "errors": sim.api.errors},
        "checks": {
            "passed": not mismatches,
            "mismatches": mismatches,
            "problems": sim.problems,
        },
    }


def _fmt(x: Any, unit: str = "") -> str:
    return "–" if x is None else f"{x}{unit}"


def markdown(r: dict[str, Any]) -> str:
    o, lat, t, w = r["orders"], r["latency_s"], r["time"], r["workers"]
    lines = [
        f"# Polder simulation, seed {r['run']['seed']}, {r['run']['city']}",
        "",
        f"{r['run']['drivers']} workers, {r['run']['minutes']} min, "
        f"{r['run']['order_rate_per_min']} orders/min on average, trip scale "
        f"{r['run']['trip_scale']}; started {r['run']['started_at']}, ran "
        f"{r['run']['duration_s']} s with checks.",
        "",
        f"**Self-checks: {'passed' if r['checks']['passed'] else 'FAILED'}**",
        "",
        "## Orders",
        "",
        "| placed | offered | matched | completed | cancelled (customer) | cancelled at run end "
        "| cancelled (driver) | expired |",
        "|---|---|---|---|---|---|---|---|",
        f"| {o['placed']} | {o['offered']} | {o['matched']} | {o['completed']} | "
        f"{o['cancelled_by_customer']} | {o['cancelled_at_run_end']} | "
        f"{o['cancelled_by_driver']} | {o['expired']} |",
        "",
        "## Latency and pickup (seconds)",
        "",
        "| | count | p50 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    rows = [
        ("order → first offer (seen on the feed)", lat["order_to_offer"]),
        ("… of which beyond the batch window", lat["order_to_offer_beyond_window"]),
        ("… rides only, beyond the batch window", lat["ride_to_offer_beyond_window"]),
        ("order → assignment (dispatch's stamps)", lat["order_to_assignment"]),
        ("pickup ETA (dispatch's estimate)", r["pickup"]["eta_s"]),
        ("drive to pickup (simulated)", r["pickup"]["drive_s"]),
        ("trip completed → fare in billing", r["billing_lag_s"]["trip_completed_to_fare"]),
        ("statement check waited for billing", r["billing_lag_s"]["statement_check_waited"]),
    ]
    lines += [
        f"| {name} | {s['count']} | {_fmt(s['p50'])} | {_fmt(s['p99'])} | {_fmt(s['max'])} |"
        for name, s in rows
    ]
    lines += [
        "",
        "## Workers' time (from their statements)",
        "",
        f"Online {t['online_h']} h: P1 {_fmt(t['p1_share'])}, P2 {_fmt(t['p2_share'])}, "
        f"P3 {_fmt(t['p3_share'])}. Waiting paid {t['paid_waiting_h']} h, unpaid "
        f"{t['unpaid_waiting_h']} h (share of online time {_fmt(t['unpaid_waiting_share'])}).",
        "",
        f"{w['went_online']} workers went online; {w['offers']} offers, {w['accepted']} accepted, "
        f"{w['declined']} declined, {w['lost_offers']} lost; {w['pings_sent']} pings.",
        "",
        "## Earnings per online hour, by pay policy",
        "",
        *(
            [
                f"Trips are scaled by {r['run']['trip_scale']} to fit the run, but fares keep "
                "their base and minimum amounts: pay per hour is higher than full-length trips "
                "would give. Compare policies with each other, not with real earnings.",
                "",
            ]
            if r["run"]["trip_scale"] < 1
            else []
        ),
        "| policy | per online hour (minor units) | worker median | unpaid waiting h | workers |",
        "|---|---|---|---|---|",
    ]
    for policy, e in r["earnings_per_online_hour"].items():
        if "not_comparable" in e:
            lines.append(f"| {policy} | not comparable: {e['not_comparable']} | | | |")
        else:
            lines.append(
                f"| {policy} | {_fmt(e['per_online_hour_minor'])} {e['currency']} | "
                f"{_fmt(e['worker_median_per_online_hour_minor'])} | {e['unpaid_waiting_h']} | "
                f"{e['workers']} |"
            )
    lines += ["", "## Mismatches", ""]
    lines += [f"- {m}" for m in r["checks"]["mismatches"]] or ["None."]
    if r["checks"]["problems"]:
        lines += ["", "## Problems seen while running", ""]
        lines += [f"- {p}" for p in r["checks"]["problems"][:200]]
    charts = r.get("charts") or []
    if charts:
        lines += ["", "## Charts", ""] + [f"![{c}]({c})" for c in charts]
    return "\n".join(lines) + "\n"


def write(directory: Path, report: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    )
    (directory / "report.md").write_text(markdown(report))
