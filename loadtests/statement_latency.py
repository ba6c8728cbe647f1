"""Statement latency for a worker with a month of history, under every pay policy.

    python -m loadtests.statement_latency [--days 30] [--shift-hours 10] [--others 2]
                                          [--repeat 20] [--seed 9]

Starts its own embedded Postgres and Tansu broker, produces a seeded month of history for one
worker (``--days`` shifts of ``--shift-hours``: offers, declines, full trip lifecycles, breaks,
location batches every 8 s) and for ``--others`` other workers (so the tables hold more than
one worker), with the stream builder of ``loadtests.billing_throughput``; then starts
``python -m polder serve billing`` and lets **its consumers** write the rows (the real ingest
path: driver events, orders, thinned pings, ledger postings). Once everything is consumed it
asks ``GET /v1/drivers/{id}/statement`` for one day, one week and the whole month under each
policy, ``--repeat`` times each after one warm-up request, one request at a time, and reports
p50/p99/max of the client-measured latency. Checks every answer: status 200, and for the month
online + break seconds equal to the shifts the generator wrote, to the millisecond.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from loadtests import _system
from loadtests._report import fmt, table, write_result
from loadtests._stats import percentile
from loadtests.billing_throughput import (
    Stream,
    Worker,
    in_broker_order,
    infrastructure,
    measure,
    produce,
    start_billing,
)
from polder.billing.domain.policies import PolicyName
from polder.common.auth import issue_token

DRIVER = "drv-month"
POLICIES = [p.value for p in PolicyName]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.statement_latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--days", type=int, default=30, help="days of history (one shift a day)")
    p.add_argument("--shift-hours", type=float, default=10.0)
    p.add_argument("--others", type=int, default=2, help="other workers with the same month")
    p.add_argument("--repeat", type=int, default=20, help="timed requests per range and policy")
    p.add_argument("--seed", type=int, default=9)
    p.add_argument("--timeout", type=float, default=600.0, help="limit for billing to consume")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="record billing with py-spy (raw) while it answers")
    p.add_argument("--out", default="statement_latency")
    a = p.parse_args(argv)
    if not 1 <= a.days <= 60 or a.shift_hours <= 0 or a.others < 0 or a.repeat < 1:
        p.error("--days 1..60, --shift-hours > 0, --others >= 0, --repeat >= 1")
    return a


def build(a: argparse.Namespace, now: datetime) -> tuple[Stream, list[tuple[datetime, datetime]],
                                                         datetime]:
    """The month ends at the last midnight (UTC) before ``now``; shifts start 06:00-10:00."""
    rng = random.Random(a.seed)
    stream = Stream()
    end = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first_day = end - timedelta(days=a.days)
    shifts: list[tuple[datetime, datetime]] = []
    for n in range(1 + a.others):
        w = Worker(rng, stream, DRIVER if n == 0 else f"drv-other-{n}", first_day)
        for d in range(a.days):
            w.t = first_day + timedelta(days=d, hours=6, seconds=rng.uniform(0, 4 * 3600))
            w.shift(w.t + timedelta(hours=a.shift_hours), 0.2)
        if n == 0:
            shifts = w.shifts
    return in_broker_order(stream, rng, 0.0), shifts, first_day


async def ask(base: str, token: str, ranges: dict[str, tuple[datetime, datetime]],
              repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=120.0, trust_env=False,
                                 headers=headers) as client:
        for name, (a, b) in ranges.items():
            for policy in POLICIES:
                params = {"from": a.isoformat(), "to": b.isoformat(), "policy": policy}
                url = f"/v1/drivers/{DRIVER}/statement"
                first = await client.get(url, params=params)  # warm-up, and the answer checked
                samples, statuses = [], {}
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    r = await client.get(url, params=params)
                    samples.append(time.perf_counter() - t0)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                body = first.json()
                out[f"{name}/{policy}"] = {
                    "range": name,
                    "policy": policy,
                    "statuses": statuses,
                    "first_status": first.status_code,
                    "p50_ms": 1000 * percentile(samples, 0.5),
                    "p99_ms": 1000 * percentile(samples, 0.99),
                    "max_ms": 1000 * max(samples),
                    "answer": _summary(body) if first.status_code == 200 else body,
                }
    return out


def _summary(body: dict[str, Any]) -> dict[str, Any]:
    """What the results keep of an answer (a month's pay lines would fill the file)."""
    earnings = body["earnings"]
    return {
        "time": body["time"],
        "engaged_km": body["engaged_km"],
        "earnings": {k: earnings[k] for k in ("currency", "topup_minor", "total_minor")}
        | {"lines": len(earnings["lines"])},
        "rates_conversion": body.get("rates_conversion"),
    }


def expected_seconds(shifts: list[tuple[datetime, datetime]], a: datetime, b: datetime) -> float:
    return sum(max(0.0, (min(e, b) - max(s, a)).total_seconds()) for s, e in shifts)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    command = "python -m loadtests.statement_latency " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    _system.stop_on_sigterm()
    print(f"Machine: {_system.describe_machine('billing')}", flush=True)
    stream, shifts, first_day = build(a, datetime.now(UTC))
    mine = sum(1 for r in stream.records if r[1] == DRIVER)
    print(f"stream: {len(stream.records):,} records; {mine:,} of them for {DRIVER}", flush=True)
    mid = first_day + timedelta(days=a.days // 2)
    ranges = {
        "day": (mid, mid + timedelta(days=1)),
        "week": (mid, mid + timedelta(days=min(7, a.days))),
        "month": (first_day, first_day + timedelta(days=a.days)),
    }
    with infrastructure() as (system, settings, tmp):
        produce_s = asyncio.run(produce(settings, stream))
        svc = start_billing(system, settings, tmp)
        events = stream.event_records
        m = asyncio.run(measure(svc, len(stream.records), events, a.timeout))
        print(f"produced in {produce_s:.1f} s, consumed by billing in "
              f"{m.last_at - m.first_at:.1f} s; asking statements", flush=True)
        token = issue_token(settings, "operator", "ops-bench")
        profiler = None
        if a.profile:
            py_spy = Path(sys.executable).with_name("py-spy")
            profiler = subprocess.Popen(
                [str(py_spy), "record", "-p", str(svc.pid), "-d", "600", "--format", "raw",
                 "--nonblocking", "-o", a.profile],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
        results = asyncio.run(ask(svc.base_url, token, ranges, a.repeat))
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
    checks: dict[str, bool] = {}
    for key, r in results.items():
        checks[f"{key}: every answer 200"] = r["first_status"] == 200 and set(r["statuses"]) == {
            200
        }
        if r["first_status"] == 200:
            t = r["answer"]["time"]
            want = expected_seconds(shifts, *ranges[r["range"]])
            checks[f"{key}: online + break = the shifts written"] = (
                abs(t["online_s"] + t["break_s"] - want) < 0.01
            )
    doc = {
        "options": {k: v for k, v in vars(a).items() if k not in ("out", "profile")},
        "stream": {"records": len(stream.records), "worker_records": mine,
                   "completed_trips": len(stream.completed_trips), "produce_s": produce_s},
        "ranges": {k: [x.isoformat(), y.isoformat()] for k, (x, y) in ranges.items()},
        "results": results,
        "checks": checks,
    }
    rows = [
        (f"{r['range']:<5} {r['policy']:<15}",
         f"p50 {fmt(r['p50_ms'], ' ms')}  p99 {fmt(r['p99_ms'], ' ms')}  "
         f"max {fmt(r['max_ms'], ' ms')}  {r['statuses']}")
        for r in results.values()
    ]
    failed = [k for k, ok in checks.items() if not ok]
    rows.append(("checks", f"{len(checks) - len(failed)} ok, {len(failed)} failed"))
    rows += [(f"FAILED: {k}", "") for k in failed]
    print("\n" + table(f"Statement latency, {a.days} days of history "
                       f"({a.repeat} requests each, one at a time)", rows) + "\n", flush=True)
    print(f"wrote {write_result(a.out, command.strip(), doc)}", flush=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
