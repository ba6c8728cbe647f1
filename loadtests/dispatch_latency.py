"""Dispatch latency benchmark: orders at a fixed rate, thousands of workers online, order→offer.

    python -m loadtests.dispatch_latency [--orders-per-s 200] [--drivers 10000] [--seconds 30]
                                         [--window 1.0] [--feed-drivers 1000] ...

Starts its own embedded Postgres, Tansu broker and dispatch service (one process,
``python -m polder serve dispatch``) on free loopback ports. Driver processes put every driver
online through the API, publish their positions on the location stream, answer offers (feed or
topic) and drive the accepted trips; a customer process places orders at the fixed rate. The
harness reads the service's ``polder.orders`` and ``polder.dispatch`` topics for per-order
server times and its ``/metrics`` once a second. Writes ``loadtests/results/<out>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import httpx

from loadtests._dispatch_load import (
    CustomerPlan,
    CustomerReport,
    DriverPlan,
    DriverReport,
    TopicReader,
    customer_entry,
    driver_entry,
    topic_reader,
)
from loadtests._dispatch_report import render, summarise
from loadtests._loadgen import Window, wait_for
from loadtests._report import host_loop_s, write_result
from loadtests._stats import Scrape, cpu_snapshot, pids_matching, process_table
from loadtests._system import (
    RunningService,
    raise_fd_limit,
    service,
    stop_on_sigterm,
)

AVAILABLE = "polder_dispatch_available_workers"


@dataclass(frozen=True, slots=True)
class Options:
    orders_per_s: float
    drivers: int
    seconds: float
    window: float
    warmup: float
    feed_drivers: int
    driver_procs: int
    customers: int
    connections: int
    driver_connections: int
    think_s: float
    trip_s: float
    trips: str
    decline: float
    ignore: float
    delivery_share: float
    position_interval_s: float
    drain_s: float
    seed: int
    profile: str | None
    out: str


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.dispatch_latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders-per-s", type=float, default=200.0, help="orders placed per second")
    p.add_argument("--drivers", type=int, default=10_000, help="workers online")
    p.add_argument("--seconds", type=float, default=30.0, help="measured window (after warm-up)")
    p.add_argument("--window", type=float, default=1.0,
                   help="the service's batch window, seconds (POLDER_BATCH_WINDOW_S)")
    p.add_argument("--warmup", type=float, default=5.0, help="orders before the window starts")
    p.add_argument("--feed-drivers", type=int, default=1_000,
                   help="drivers that hold the WebSocket feed; the rest hear of offers from "
                        "the polder.dispatch topic")
    p.add_argument("--driver-procs", type=int, default=1, help="driver-app processes")
    p.add_argument("--customers", type=int, default=5_000, help="distinct customers")
    p.add_argument("--connections", type=int, default=1024,
                   help="keep-alive HTTP connections of the customer process (orders are due "
                        "at a fixed rate; one starts late only when all are busy)")
    p.add_argument("--driver-connections", type=int, default=256,
                   help="keep-alive HTTP connections per driver process (each driver's phone "
                        "has its own: keep this high enough that no request waits for one)")
    p.add_argument("--think", type=float, default=1.0,
                   help="mean seconds before a driver answers an offer (uniform 0.5x-1.5x)")
    p.add_argument("--trip-seconds", type=float, default=8.0,
                   help="accept → completed (four trip steps, evenly spaced)")
    p.add_argument("--trips", choices=["complete", "hold"], default="complete",
                   help="complete: drivers drive accepted trips to the end (4 requests each) and "
                        "are available again; hold: they stay on the trip (no trip requests; "
                        "supply shrinks by one driver per accepted offer)")
    p.add_argument("--decline", type=float, default=0.08, help="share of offers declined")
    p.add_argument("--ignore", type=float, default=0.02,
                   help="share of offers left unanswered (they expire)")
    p.add_argument("--delivery-share", type=float, default=0.2,
                   help="share of orders that are deliveries (ready now)")
    p.add_argument("--position-interval", type=float, default=20.0,
                   help="seconds between a driver's position events (TTL is 60 s)")
    p.add_argument("--drain", type=float, default=40.0,
                   help="after the window, wait up to this long for its orders' outcomes")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="record the service with py-spy (raw, non-blocking) during the window")
    p.add_argument("--out", default="dispatch_latency",
                   help="results file name (loadtests/results/OUT.json)")
    a = p.parse_args(argv)
    if (a.orders_per_s <= 0 or a.drivers < a.driver_procs or a.driver_procs < 1 or a.seconds <= 0
            or a.window <= 0 or not 0 <= a.feed_drivers <= a.drivers or a.customers < 1
            or a.decline + a.ignore > 1 or a.position_interval >= 60):
        p.error("check the ranges: rates and times positive, --feed-drivers <= --drivers, "
                "--decline + --ignore <= 1, --position-interval < 60")
    return Options(
        a.orders_per_s, a.drivers, a.seconds, a.window, a.warmup, a.feed_drivers, a.driver_procs,
        a.customers, a.connections, a.driver_connections, a.think, a.trip_seconds, a.trips,
        a.decline, a.ignore,
        a.delivery_share, a.position_interval, a.drain, a.seed, a.profile, a.out,
    )


@dataclass(slots=True)
class Run:
    options: dict[str, Any]
    window: Window
    reader: TopicReader
    scrapes: list[Scrape] = field(default_factory=list)  # window start, every second, window end
    scrape_latency_s: list[float] = field(default_factory=list)
    drain_s: float = math.nan
    cpu: dict[str, float] = field(default_factory=dict)
    drivers: list[DriverReport] = field(default_factory=list)
    customers: list[CustomerReport] = field(default_factory=list)
    setup_s: float = math.nan


async def _scrape(client: httpx.AsyncClient, url: str, run: Run | None = None) -> Scrape:
    at = time.time()
    resp = await client.get(f"{url}/metrics")
    resp.raise_for_status()
    if run is not None:
        run.scrape_latency_s.append(time.time() - at)
    return Scrape.parse(at, resp.text)


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.time()))


def _plans(svc: RunningService, opts: Options) -> tuple[list[DriverPlan], list[CustomerPlan]]:
    ids = [f"drv-{i:06d}" for i in range(opts.drivers)]
    feed = set(ids[:: max(1, opts.drivers // opts.feed_drivers)][: opts.feed_drivers]
               if opts.feed_drivers else ())
    drivers = [
        DriverPlan(
            worker=w, base_url=svc.base_url, kafka_bootstrap=svc.settings.kafka_bootstrap,
            driver_ids=ids[w :: opts.driver_procs],
            feed_ids=[d for d in ids[w :: opts.driver_procs] if d in feed],
            seed=opts.seed + w, position_interval_s=opts.position_interval_s,
            think_s=opts.think_s, trip_s=opts.trip_s, complete_trips=opts.trips == "complete",
            decline=opts.decline, ignore=opts.ignore, connections=opts.driver_connections,
        )
        for w in range(opts.driver_procs)
    ]
    customers = [
        CustomerPlan(
            worker=opts.driver_procs, base_url=svc.base_url,
            customer_ids=[f"cust-{i:06d}" for i in range(opts.customers)],
            orders_per_s=opts.orders_per_s, connections=opts.connections,
            delivery_share=opts.delivery_share, seed=opts.seed + 1000,
        )
    ]
    return drivers, customers


async def _await_supply(client: httpx.AsyncClient, url: str, want: float, limit_s: float) -> float:
    """Wait until a batch has seen ``want`` available workers (online, fresh position)."""
    deadline = time.monotonic() + limit_s
    seen = 0.0
    while time.monotonic() < deadline:
        seen = (await _scrape(client, url)).total(AVAILABLE)
        if seen >= want:
            return seen
        await asyncio.sleep(0.5)
    raise TimeoutError(f"only {seen:.0f} of {want:.0f} workers available after {limit_s:.0f} s")


async def _observe(client: httpx.AsyncClient, url: str, run: Run,
                   groups: dict[str, list[int]]) -> None:
    """Scrape at the window's edges and once a second in between; CPU time across the window."""
    w = run.window
    await _sleep_until(w.measure_from)
    cpu0 = cpu_snapshot(groups)
    run.scrapes.append(await _scrape(client, url, run))
    tick = w.measure_from + 1.0
    while tick < w.measure_to - 0.5:
        await _sleep_until(tick)
        run.scrapes.append(await _scrape(client, url, run))
        tick += 1.0
    await _sleep_until(w.measure_to)
    cpu1 = cpu_snapshot(groups)
    run.scrapes.append(await _scrape(client, url, run))
    run.cpu = {k: (cpu1[k] - cpu0[k]) / (w.measure_to - w.measure_from) for k in cpu1}
    run.cpu["other"] = run.cpu["box"] - sum(v for k, v in run.cpu.items() if k != "box")


async def _drain(run: Run, limit_s: float) -> None:
    """After the window: wait until every order placed in it has been offered and then assigned
    or expired (the drivers keep answering meanwhile), or the limit passes."""
    w, reader = run.window, run.reader
    await asyncio.sleep(1.0)  # the last requests of the window are answered and relayed
    while True:
        window_orders = [o for o, t in reader.placed.items() if w.measure_from <= t <= w.measure_to]
        offered = {o.order_id for o in reader.offers}
        settled = all(
            o in offered and (o in reader.assigned or o in reader.expired) for o in window_orders
        )
        if settled or time.time() - w.measure_to > limit_s:
            break
        await asyncio.sleep(0.25)
    run.drain_s = time.time() - w.measure_to


def _cpu_groups(svc: RunningService, procs: list[SpawnProcess]) -> dict[str, list[int]]:
    table = process_table()
    return {
        "service": [svc.pid],  # the API process
        # the matcher process (and anything else the service started)
        "matcher": [pid for pid, (ppid, _) in table.items() if ppid == svc.pid],
        "loadgen": [p.pid for p in procs if p.pid is not None],
        "broker": pids_matching(f"tcp://{svc.settings.kafka_bootstrap}"),
        "postgres": pids_matching(str(svc.pgdata)),
        "harness": [os.getpid()],
    }


def _start_profile(svc: RunningService, opts: Options) -> subprocess.Popen[bytes] | None:
    if not opts.profile:
        return None
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(py_spy), "record", "-p", str(svc.pid), "--subprocesses",
         "-d", str(math.ceil(opts.seconds)),
         "--format", "raw", "--nonblocking", "-o", opts.profile],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )


async def _measure(svc: RunningService, opts: Options, procs: list[SpawnProcess],
                   out: Queue[Any], controls: list[Queue[Any]], run_reader: TopicReader) -> Run:
    started = time.time()
    await asyncio.to_thread(wait_for, out, "ready", len(procs), 900)
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
        seen = await _await_supply(client, svc.base_url, 0.98 * opts.drivers, 120)
        setup_s = time.time() - started
        print(f"{len(procs)} load processes ready, {seen:.0f} workers available, "
              f"in {setup_s:.1f} s", flush=True)
        start = time.time() + 0.5
        window = Window(start, start + opts.warmup, start + opts.warmup + opts.seconds)
        for c in controls:
            c.put(window)
        options = {k: v for k, v in asdict(opts).items() if k not in ("out", "profile")}
        run = Run(options, window, run_reader, setup_s=setup_s)
        await _sleep_until(window.measure_from)
        profiler = _start_profile(svc, opts)
        await _observe(client, svc.base_url, run, _cpu_groups(svc, procs))
        await _drain(run, opts.drain_s)
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, 60)
    for c in controls[: opts.driver_procs]:
        c.put("stop")  # the customers stop by themselves at the end of the window
    reports = await asyncio.to_thread(wait_for, out, "report", len(procs), 120)
    run.drivers = [r for r in reports if isinstance(r, DriverReport)]
    run.customers = [r for r in reports if isinstance(r, CustomerReport)]
    return run


async def _run(svc: RunningService, opts: Options) -> Run:
    """Start the load processes and the topic reader, measure, and always reap them."""
    ctx = multiprocessing.get_context("spawn")
    out: Queue[Any] = ctx.Queue()
    driver_plans, customer_plans = _plans(svc, opts)
    controls: list[Queue[Any]] = [ctx.Queue() for _ in (*driver_plans, *customer_plans)]
    procs = [
        ctx.Process(target=driver_entry, args=(plan, out, controls[i]), daemon=True)
        for i, plan in enumerate(driver_plans)
    ] + [
        ctx.Process(target=customer_entry, args=(plan, out, controls[len(driver_plans) + i]),
                    daemon=True)
        for i, plan in enumerate(customer_plans)
    ]
    reader, consumer = await topic_reader(svc.settings)
    reading = asyncio.create_task(reader.run(consumer))
    for p in procs:
        p.start()
    try:
        return await _measure(svc, opts, procs, out, controls, reader)
    finally:
        for c in controls:  # a process still waiting for its window or for "stop" ends now
            c.put("stop")
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await consumer.stop()
        for p in procs:
            await asyncio.to_thread(p.join, 15)
            if p.is_alive():
                p.terminate()
                p.join()


def _service_env(opts: Options) -> dict[str, str]:
    return {"POLDER_BATCH_WINDOW_S": str(opts.window)}


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "python -m loadtests.dispatch_latency " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    stop_on_sigterm()
    raise_fd_limit(4 * (opts.feed_drivers + opts.connections + opts.driver_connections) + 4096)
    print(
        f"Machine: {os.cpu_count()} cores. The dispatch service is two Python processes (API, "
        "matcher); the load generators, the Tansu broker and Postgres share the box with them.",
        flush=True,
    )
    # Dispatch has no rate limiter today; should it get one, it must not bite here.
    with service("dispatch", rate_per_s=100_000.0, burst=100_000, env=_service_env(opts)) as svc:
        print(f"Dispatch service at {svc.base_url} (pid {svc.pid}), "
              f"broker {svc.settings.kafka_bootstrap}", flush=True)
        run = asyncio.run(_run(svc, opts))
    doc = summarise(run)
    doc["host_loop_s"] = host_loop_s()
    print("\n" + render(doc) + "\n", flush=True)
    print(f"wrote {write_result(opts.out, command.strip(), doc)}", flush=True)
    return 0 if not doc["errors"]["total"] and not doc["checks"]["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
