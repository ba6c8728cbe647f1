"""Location ingest benchmark: simulated drivers → HTTP or WebSocket → broker → in-memory index.

    python -m loadtests.ingest [--seconds 20] [--drivers 5000] [--batch 50] [--procs 2]
                               [--mode http|ws|both] [--concurrency 64] [--rate PINGS_PER_S]

Starts its own embedded Postgres, Tansu broker and location service (one process) on free
loopback ports, drives it from ``--procs`` load-generator processes for a warm-up plus
``--seconds``, reading the service's Prometheus metrics at the edges of the window and once a
second in between. Writes ``loadtests/results/ingest-<mode>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from typing import Any

import httpx

from loadtests._ingest_report import Run, render, summarise
from loadtests._loadgen import Mode, Plan, Window, WorkerReport, wait_for, worker_entry
from loadtests._report import host_loop_s, write_result
from loadtests._stats import Scrape, cpu_snapshot, pids_matching, process_table
from loadtests._system import (
    RunningService,
    drivers_on_shift,
    location_service,
    publish_online,
    raise_fd_limit,
    stop_on_sigterm,
    wait_on_shift,
)

TO_INDEX_COUNT = "polder_location_ping_to_index_seconds_count"
BATCHES_COUNT = "polder_location_batch_size_pings_count"


@dataclass(frozen=True, slots=True)
class Options:
    seconds: float
    warmup: float
    drivers: int
    batch: int
    procs: int
    concurrency: int
    modes: tuple[Mode, ...]
    rate: float | None
    seed: int
    out: str


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.ingest", description=__doc__)
    p.add_argument("--seconds", type=float, default=20.0, help="measured window (after warm-up)")
    p.add_argument("--warmup", type=float, default=3.0, help="load before the window starts")
    p.add_argument("--drivers", type=int, default=5000)
    p.add_argument("--batch", type=int, default=50, help="pings per request or frame (max 500)")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight per process")
    p.add_argument("--mode", choices=["http", "ws", "both"], default="both")
    p.add_argument("--rate", type=float, default=None,
                   help="offered pings/s over all processes (default: as fast as answers come)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="ingest",
                   help="results file prefix (loadtests/results/OUT-<mode>.json)")
    a = p.parse_args(argv)
    if not 1 <= a.batch <= 500 or a.drivers < a.procs or a.procs < 1 or a.seconds <= 0:
        p.error("need 1 <= --batch <= 500, --drivers >= --procs >= 1 and --seconds > 0")
    modes: tuple[Mode, ...] = ("http", "ws") if a.mode == "both" else (a.mode,)
    return Options(
        a.seconds, a.warmup, a.drivers, a.batch, a.procs, a.concurrency, modes, a.rate, a.seed,
        a.out,
    )


def _scrape(client: httpx.Client, url: str) -> Scrape:
    at = time.time()
    resp = client.get(f"{url}/metrics")
    resp.raise_for_status()
    return Scrape.parse(at, resp.text)


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def _plans(svc: RunningService, mode: Mode, opts: Options) -> list[Plan]:
    ids = [f"{mode}-drv-{i:06d}" for i in range(opts.drivers)]
    per_proc = opts.rate / opts.batch / opts.procs if opts.rate else None
    return [
        Plan(mode, svc.base_url, ids[w :: opts.procs], opts.batch, opts.concurrency,
             opts.seed + w, per_proc)
        for w in range(opts.procs)
    ]


def _cpu_groups(svc: RunningService, workers: list[SpawnProcess]) -> dict[str, list[int]]:
    return {
        "service": [svc.pid],
        # the trace writer's process (and anything else the service started)
        "traces": [pid for pid, (ppid, _) in process_table().items() if ppid == svc.pid],
        "loadgen": [w.pid for w in workers if w.pid is not None],
        "broker": pids_matching(f"tcp://{svc.settings.kafka_bootstrap}"),
        "postgres": pids_matching(str(svc.pgdata)),
        "harness": [os.getpid()],
    }


def _observe(client: httpx.Client, url: str, run: Run, groups: dict[str, list[int]]) -> None:
    """Scrape at the window's edges and once a second in between; CPU time across the window."""
    w = run.window
    _sleep_until(w.measure_from)
    cpu0 = cpu_snapshot(groups)
    run.scrapes.append(_scrape(client, url))
    tick = w.measure_from + 1.0
    while tick < w.measure_to - 0.5:
        _sleep_until(tick)
        run.scrapes.append(_scrape(client, url))
        tick += 1.0
    _sleep_until(w.measure_to)
    run.scrapes.append(_scrape(client, url))
    cpu1 = cpu_snapshot(groups)
    run.cpu = {k: (cpu1[k] - cpu0[k]) / (w.measure_to - w.measure_from) for k in cpu1}
    run.cpu["other"] = run.cpu["box"] - sum(v for k, v in run.cpu.items() if k != "box")


def _drain(client: httpx.Client, url: str, run: Run, limit_s: float = 30.0) -> None:
    """After the window, wait until no batch arrives any more and the index has an event for
    every batch the service screened (a batch with no accepted ping would publish none)."""
    prev = run.before
    while True:
        time.sleep(0.05)
        s = _scrape(client, url)
        batches = s.total(BATCHES_COUNT) - run.before.total(BATCHES_COUNT)
        indexed = s.total(TO_INDEX_COUNT) - run.before.total(TO_INDEX_COUNT)
        settled = s.total(BATCHES_COUNT) == prev.total(BATCHES_COUNT)
        if (settled and indexed >= batches) or s.at - run.window.measure_to > limit_s:
            run.drained, run.drain_s = s, s.at - run.window.measure_to
            return
        prev = s


def _measure(svc: RunningService, mode: Mode, opts: Options, workers: list[SpawnProcess],
             out: Queue[Any], windows: Queue[Any]) -> Run:
    started = time.time()
    wait_for(out, "ready", len(workers), timeout_s=300)
    print(f"[{mode}] {len(workers)} load generators ready in {time.time() - started:.1f} s",
          flush=True)
    start = time.time() + 0.5
    window = Window(start, start + opts.warmup, start + opts.warmup + opts.seconds)
    for _ in workers:
        windows.put(window)
    options = {k: v for k, v in asdict(opts).items() if k not in ("modes", "out")}
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        run = Run(mode, options, window, before=_scrape(client, svc.base_url))
        _observe(client, svc.base_url, run, _cpu_groups(svc, workers))
        _drain(client, svc.base_url, run)
    reports: list[WorkerReport] = wait_for(out, "report", len(workers), timeout_s=120)
    for r in reports:
        for phase, tally in r.tallies.items():
            run.tallies[phase].add(tally)
    return run


def run_mode(svc: RunningService, mode: Mode, opts: Options) -> Run:
    """Start the load generators, measure one window, and always reap them."""
    plans = _plans(svc, mode, opts)
    # Every simulated driver goes online first (as dispatch would publish it), before the clock.
    ids = [d for plan in plans for d in plan.driver_ids]
    before = drivers_on_shift(svc.base_url)
    asyncio.run(publish_online(svc.settings, ids))
    wait_on_shift(svc.base_url, before + len(ids))
    ctx = multiprocessing.get_context("spawn")
    out: Queue[Any] = ctx.Queue()
    windows: Queue[Any] = ctx.Queue()
    workers = [
        ctx.Process(target=worker_entry, args=(i, plan, out, windows), daemon=True)
        for i, plan in enumerate(plans)
    ]
    for w in workers:
        w.start()
    try:
        return _measure(svc, mode, opts, workers, out, windows)
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
                w.join()


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "python -m loadtests.ingest " + shlex.join(sys.argv[1:] if argv is None else argv)
    stop_on_sigterm()
    raise_fd_limit(4 * opts.drivers + 1024)
    print(
        f"Machine: {os.cpu_count()} cores. The location service is one Python process for "
        "ingest and the index (one core at most) plus one for the trace writer; the load "
        "generators, the Tansu broker and Postgres share the box with them.",
        flush=True,
    )
    clean = True
    with location_service() as svc:
        print(f"Location service at {svc.base_url} (pid {svc.pid}), "
              f"broker {svc.settings.kafka_bootstrap}", flush=True)
        for mode in opts.modes:
            doc = summarise(run_mode(svc, mode, opts))
            doc["host_loop_s"] = host_loop_s()
            print("\n" + render(doc) + "\n", flush=True)
            print(f"wrote {write_result(f'{opts.out}-{mode}', command.strip(), doc)}", flush=True)
            clean &= not doc["client"]["all_phases"]["errors"]
    print("ping→index percentiles are interpolated linearly inside the service's histogram "
          "buckets (5, 10, 25, 50, 100, 250, 500 ms, ...), as Prometheus' histogram_quantile does.")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
