"""Batch solve time: ``assign_batch`` in the dispatch-latency city, without the service around it.

    python -m loadtests.solve_time [--drivers 10000] [--busy 0.5] [--orders 250] [--batches 40]

The matcher's solve (candidate search, fairness, the assignment, widening, the decisions) is
the largest part of a batch's time at 200 orders/s, and the service's figures swing with the
host. This measures it alone: the dispatch-latency benchmark's 20 km city (``_dispatch_load``:
drivers 40 % near hotspots, pickups 70 %), a share of the drivers busy (in the index, not
available: as after a burst of 200 orders/s for 20 s with drivers holding their trips), and
batches of fresh ride orders, each solved once. A few warm-up batches go first, so the H3
rings the index keeps are as warm as in a running matcher.

Per batch: the process time of ``assign_batch`` (the figure), then, on the same batch, of the
candidate search alone, both ways: every order's ``candidates`` through the index's H3 rings
(now warm), and as a batch of ``tree_from_orders`` or more does it, a k-d tree of the available
workers (kept as arrays, ``nearest.WorkerPoints``, as in the matcher) built and asked for
every order at once (``nearest.WorkerTree``). Process time, not
wall time: the host's other tenants move wall time by half. Writes
``loadtests/results/solve_time.json``.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from loadtests._dispatch_load import DRIVERS_NEAR_HOTSPOTS, city_point, trip_from
from loadtests._report import write_result
from loadtests._stats import percentile
from polder.common.geoindex import LocationIndex
from polder.dispatch.domain.availability import Availability, FreshIdle
from polder.dispatch.domain.matching import (
    MatchConfig,
    OpenOrder,
    assign_batch,
    candidates,
    candidates_found,
)
from polder.dispatch.domain.nearest import WorkerPoints, WorkerTree

NOW = 1_750_000_000.0
WARM_UP_BATCHES = 5


@dataclass(frozen=True, slots=True)
class Options:
    drivers: int
    busy: float
    orders: int
    batches: int
    seed: int
    out: str


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.solve_time", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drivers", type=int, default=10_000, help="drivers in the index")
    p.add_argument("--busy", type=float, default=0.5, help="share of them busy (not available)")
    p.add_argument("--orders", type=int, default=250, help="orders per batch")
    p.add_argument("--batches", type=int, default=40, help="batches measured")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="solve_time", help="loadtests/results/OUT.json")
    a = p.parse_args(argv)
    if not 0.0 <= a.busy < 1.0 or a.drivers < 1 or a.orders < 1 or a.batches < 1:
        p.error("need drivers, orders and batches >= 1 and 0 <= busy < 1")
    return Options(a.drivers, a.busy, a.orders, a.batches, a.seed, a.out)


def measure(opts: Options) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    index = LocationIndex(resolution=9, ttl_s=60.0)
    idle: dict[str, float | None] = {}
    for i in range(opts.drivers):
        driver_id = f"drv-{i:05d}"
        index.upsert(driver_id, *city_point(rng, DRIVERS_NEAR_HOTSPOTS), NOW - 1, NOW - 1)
        if rng.random() >= opts.busy:
            idle[driver_id] = NOW - rng.uniform(0.0, 600.0)
    # As in the matcher: the idle workers' positions followed as arrays for the batch's tree.
    availability = Availability()
    availability.load((driver_id, 1, "idle", since) for driver_id, since in idle.items())
    points = WorkerPoints.following(index, availability)
    workers = FreshIdle(availability.idle, index, NOW, points)
    config = MatchConfig()
    solve_s: list[float] = []
    search_s: list[float] = []
    tree_s: list[float] = []
    assigned = 0
    for n in range(WARM_UP_BATCHES + opts.batches):
        orders = [
            OpenOrder(f"o{n}-{j}", "ride", *trip_from(rng)[0], created_at=NOW - rng.random())
            for j in range(opts.orders)
        ]
        started = time.process_time()
        result = assign_batch(orders, workers, index, NOW, config)
        solved = time.process_time()
        for order in orders:
            candidates(order, workers, index, NOW, config)
        searched = time.process_time()
        tree = WorkerTree.of(workers, index, NOW)
        queries = [(o.pickup_lat, o.pickup_lng, o.excluded) for o in orders]
        hits = tree.nearest_each(queries, config.max_radius_m, config.k_nearest)
        for order, found in zip(orders, hits, strict=True):
            candidates_found(order, found, workers, NOW, config)
        tree_searched = time.process_time()
        if n >= WARM_UP_BATCHES:
            solve_s.append(solved - started)
            search_s.append(searched - solved)
            tree_s.append(tree_searched - searched)
            assigned += len(result.assignments)
    return {
        "available": len(idle),
        "assigned_per_batch": assigned / opts.batches,
        "solve_ms": _quantiles(solve_s),
        "candidate_search_ms": _quantiles(search_s),
        "tree_search_ms": _quantiles(tree_s),
        "solve_us_per_order_p50": percentile(solve_s, 0.5) * 1e6 / opts.orders,
    }


def _quantiles(samples: list[float]) -> dict[str, float]:
    return {f"p{q}": percentile(samples, q / 100) * 1e3 for q in (10, 50, 90)}


def render(opts: Options, doc: dict[str, Any]) -> str:
    solve, search, tree = doc["solve_ms"], doc["candidate_search_ms"], doc["tree_search_ms"]
    return "\n".join(
        [
            f"Batch solve: {opts.orders} ride orders, {opts.drivers:,} drivers "
            f"({doc['available']:,} available), {opts.batches} batches, process time",
            f"  assign_batch p10 / p50 / p90       {solve['p10']:.1f} / {solve['p50']:.1f} / "
            f"{solve['p90']:.1f} ms ({doc['solve_us_per_order_p50']:.0f} µs an order)",
            f"  candidate search, k-d tree p50     {tree['p50']:.1f} ms (as the batch does it)",
            f"  candidate search, H3 rings p50     {search['p50']:.1f} ms",
            f"  assigned per batch                 {doc['assigned_per_batch']:.1f}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "python -m loadtests.solve_time " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    doc = {"options": asdict(opts), "config": asdict(MatchConfig()), **measure(opts)}
    print(render(opts, doc))
    print(f"wrote {write_result(opts.out, command.strip(), doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
