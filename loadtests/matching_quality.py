"""Match-quality benchmark: Polder's batch matcher and sequential greedy against the optimum.

    python -m loadtests.matching_quality [--seed 1] [--trials 30] [--orders 200]

Seeded scenarios over 10 km x 10 km around Amsterdam: supply:demand 1.2:1 and 2:1, with
orders and workers spread uniformly or gathered around hotspots (orders more than workers, as
at a station at night). Every trial is one batch of ride orders; workers have been waiting
for an exponentially distributed time (mean 5 min). On the same batch and LocationIndex:

- offline optimum: ``linear_sum_assignment`` over the FULL orders x workers pickup-ETA matrix
  (no radius, no pruning), the same great-circle ETA as the matcher;
- polder: ``assign_batch`` with ``fairness_weight=0`` (the quality figure, DESIGN.md §8);
- polder + fairness: ``assign_batch`` with fairness at weight 0.5 and 1 (tolerance 30 s):
  what it costs in ETA, and what it does for the waiting time of the workers chosen;
- polder fallback: ``assign_batch`` forced onto the partitioned solver (a quarter of the
  batch per part);
- greedy: ``sequential_greedy``, each order in arrival order takes the nearest free worker.

Quality is a method's total pickup ETA over the optimum's total for the same orders (the
optimum re-solved over the orders the method served; orders it left unmatched are counted
separately). Solve time is the wall time of one call, candidate search included. Writes
``loadtests/results/matching_quality.json``.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from loadtests._report import write_result
from loadtests._stats import percentile
from polder.common.geoindex import LocationIndex
from polder.dispatch.domain.matching import (
    GREAT_CIRCLE,
    BatchResult,
    MatchConfig,
    OpenOrder,
    Worker,
    assign_batch,
    sequential_greedy,
)
from polder.simulator.city import CENTRE_LAT, CENTRE_LNG, Point, offset

HALF_SIDE_M = 5_000.0
EARTH_RADIUS_M = 6_371_008.8  # as polder.common.geoindex.haversine_m
NOW = 1_750_000_000.0
MEAN_WAIT_S = 300.0
# Busy places within the square (lat, lng, spread in metres).
HOTSPOTS = (
    (52.3731, 4.8922, 500.0),  # Dam
    (52.3791, 4.9003, 400.0),  # Centraal
    (52.3383, 4.8727, 600.0),  # Zuidas
    (52.3644, 4.8835, 500.0),  # Leidseplein
    (52.3601, 4.9261, 700.0),  # Oost
    (52.3993, 4.9155, 600.0),  # Noord
)
LAYOUTS = {"uniform": (0.0, 0.0), "hotspots": (0.6, 0.3)}  # share near hotspots: orders, workers
SUPPLY_RATIOS = (1.2, 2.0)
QUALITY_TARGET = 1.01
FAIRNESS_WEIGHTS = (0.5, 1.0)
FAIR = tuple(f"polder_fair_{w:g}" for w in FAIRNESS_WEIGHTS)
METHODS = ("polder", *FAIR, "polder_fallback", "greedy")



@dataclass(frozen=True, slots=True)
class Options:
    seed: int
    trials: int
    orders: int
    out: str = "matching_quality"


@dataclass(frozen=True, slots=True)
class Batch:
    orders: list[OpenOrder]
    workers: dict[str, Worker]
    index: LocationIndex


@dataclass(frozen=True, slots=True)
class Run:
    """One method on one batch."""

    ratio: float  # total pickup ETA / the optimum's for the same orders
    total_eta_s: float
    unmatched: int
    seconds: float
    chosen_waits_s: list[float]


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.matching_quality", description=__doc__)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--trials", type=int, default=30, help="batches per scenario")
    p.add_argument("--orders", type=int, default=200, help="orders per batch")
    p.add_argument("--out", default="matching_quality", help="loadtests/results/OUT.json")
    a = p.parse_args(argv)
    if a.trials < 1 or a.orders < 4:
        p.error("--trials must be at least 1 and --orders at least 4")
    return Options(a.seed, a.trials, a.orders, a.out)


# --- scenarios ------------------------------------------------------------------------------


def _point(rng: random.Random, hotspot_share: float) -> Point:
    if rng.random() < hotspot_share:
        lat, lng, spread = rng.choice(HOTSPOTS)
        return offset(lat, lng, rng.gauss(0.0, spread), rng.gauss(0.0, spread))
    north, east = rng.uniform(-HALF_SIDE_M, HALF_SIDE_M), rng.uniform(-HALF_SIDE_M, HALF_SIDE_M)
    return offset(CENTRE_LAT, CENTRE_LNG, north, east)


def draw_batch(rng: random.Random, orders: int, workers: int, layout: str) -> Batch:
    order_share, worker_share = LAYOUTS[layout]
    open_orders = [
        OpenOrder(f"o{i}", "ride", *_point(rng, order_share), created_at=NOW - rng.random())
        for i in range(orders)
    ]
    index = LocationIndex(resolution=9, ttl_s=1e9)
    available: dict[str, Worker] = {}
    for i in range(workers):
        lat, lng = _point(rng, worker_share)
        waited = min(3_600.0, rng.expovariate(1.0 / MEAN_WAIT_S))
        available[f"w{i}"] = Worker(f"w{i}", lat, lng, waiting_since=NOW - waited)
        index.upsert(f"w{i}", lat, lng, recorded_at=NOW - 1.0, seen_at=NOW)
    return Batch(open_orders, available, index)


# --- the offline optimum --------------------------------------------------------------------


def eta_matrix(batch: Batch) -> tuple[np.ndarray, dict[str, int], dict[str, int]]:
    """Pickup ETA of every worker to every order: GreatCircleEta, vectorised."""
    o = np.radians([[x.pickup_lat, x.pickup_lng] for x in batch.orders])
    w = np.radians([[x.lat, x.lng] for x in batch.workers.values()])
    dlat = w[None, :, 0] - o[:, None, 0]
    dlng = w[None, :, 1] - o[:, None, 1]
    cos_both = np.cos(o[:, None, 0]) * np.cos(w[None, :, 0])
    a = np.sin(dlat / 2) ** 2 + cos_both * np.sin(dlng / 2) ** 2
    arc_m = 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(1.0, np.sqrt(a)))
    matrix = arc_m * GREAT_CIRCLE.road_factor / GREAT_CIRCLE.speed_mps
    rows = {x.order_id: i for i, x in enumerate(batch.orders)}
    return matrix, rows, {driver_id: j for j, driver_id in enumerate(batch.workers)}


def optimum_s(matrix: np.ndarray, rows: Sequence[int]) -> float:
    if not rows:
        return 0.0
    sub = matrix[list(rows)]
    r, c = linear_sum_assignment(sub)
    return float(sub[r, c].sum())


# --- running the methods --------------------------------------------------------------------

Method = Callable[[Batch], BatchResult]


def _batch(config: MatchConfig) -> Method:
    return lambda b: assign_batch(b.orders, b.workers, b.index, NOW, config)


def methods(orders: int) -> dict[str, Method]:
    plain = MatchConfig(fairness_weight=0.0)
    fair = {
        name: _batch(replace(plain, fairness_weight=w))
        for name, w in zip(FAIR, FAIRNESS_WEIGHTS, strict=True)
    }
    small_parts = replace(plain, max_exact_orders=max(1, orders // 4))
    return {
        "polder": _batch(plain),
        **fair,
        "polder_fallback": _batch(small_parts),
        "greedy": lambda b: sequential_greedy(b.orders, b.workers, b.index, NOW, plain),
    }


def run(method: Method, batch: Batch, matrix: np.ndarray, rows: Mapping[str, int]) -> Run:
    started = time.perf_counter()
    result = method(batch)
    seconds = time.perf_counter() - started
    total = sum(a.eta_s for a in result.assignments)
    best = optimum_s(matrix, [rows[a.order_id] for a in result.assignments])
    waits = [NOW - batch.workers[a.driver_id].waiting_since for a in result.assignments]
    ratio = total / best if best > 0 else 1.0
    return Run(ratio, total, len(result.unmatched) + len(result.deferred), seconds, waits)


def scenario(opts: Options, ratio: float, layout: str, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    runs: dict[str, list[Run]] = {name: [] for name in METHODS}
    optimum_times: list[float] = []
    chosen = methods(opts.orders)
    for _ in range(opts.trials):
        batch = draw_batch(rng, opts.orders, round(opts.orders * ratio), layout)
        matrix, rows, _ = eta_matrix(batch)
        started = time.perf_counter()
        optimum_s(matrix, list(range(len(batch.orders))))
        optimum_times.append(time.perf_counter() - started)
        for name, method in chosen.items():
            runs[name].append(run(method, batch, matrix, rows))
    return {
        "supply_ratio": ratio,
        "layout": layout,
        "orders": opts.orders,
        "workers": round(opts.orders * ratio),
        "methods": {name: summarise(r) for name, r in runs.items()},
        "optimum_solve_ms_p50": percentile(optimum_times, 0.5) * 1e3,
        "fairness": {
            f"{w:g}": fairness_effect(runs["polder"], runs[name])
            for name, w in zip(FAIR, FAIRNESS_WEIGHTS, strict=True)
        },
    }


def summarise(runs: Sequence[Run]) -> dict[str, float]:
    ratios = [r.ratio for r in runs]
    times = [r.seconds for r in runs]
    return {
        "ratio_mean": sum(ratios) / len(ratios),
        "ratio_worst": max(ratios),
        "unmatched_total": sum(r.unmatched for r in runs),
        "total_eta_s": sum(r.total_eta_s for r in runs),
        "solve_ms_p50": percentile(times, 0.50) * 1e3,
        "solve_ms_p99": percentile(times, 0.99) * 1e3,
    }


def fairness_effect(plain: Sequence[Run], fair: Sequence[Run]) -> dict[str, float]:
    before = [w for r in plain for w in r.chosen_waits_s]
    after = [w for r in fair for w in r.chosen_waits_s]
    eta_before = sum(r.total_eta_s for r in plain)
    eta_after = sum(r.total_eta_s for r in fair)
    return {
        "extra_eta_pct": (eta_after / eta_before - 1.0) * 100.0,
        "extra_eta_s_per_order": (eta_after - eta_before) / max(1, len(after)),
        "chosen_wait_mean_s_plain": sum(before) / len(before),
        "chosen_wait_mean_s_fair": sum(after) / len(after),
        "chosen_wait_p10_s_plain": percentile(before, 0.10),
        "chosen_wait_p10_s_fair": percentile(after, 0.10),
        "chosen_wait_min_s_plain": min(before),
        "chosen_wait_min_s_fair": min(after),
    }


# --- report ---------------------------------------------------------------------------------


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join(
        [
            line(h.ljust(w) for h, w in zip(header, widths, strict=True)),
            rule,
            *(line(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows),
        ]
    )


def _name(s: Mapping[str, Any]) -> str:
    return f"{s['supply_ratio']:g}:1 {s['layout']}"


def quality_table(scenarios: Sequence[Mapping[str, Any]]) -> str:
    header = ["scenario", "method", "ETA/opt mean", "worst", "unmatched", "batch p50 ms", "p99 ms"]
    rows = []
    for s in scenarios:
        for name in METHODS:
            m = s["methods"][name]
            rows.append(
                [
                    _name(s),
                    name,
                    f"{m['ratio_mean']:.4f}",
                    f"{m['ratio_worst']:.4f}",
                    str(m["unmatched_total"]),
                    f"{m['solve_ms_p50']:.1f}",
                    f"{m['solve_ms_p99']:.1f}",
                ]
            )
    return _columns(header, rows)


def fairness_table(scenarios: Sequence[Mapping[str, Any]]) -> str:
    header = ["scenario", "weight", "extra ETA", "s/order", "chosen wait mean", "p10", "min"]
    rows = []
    for s in scenarios:
        for weight, f in s["fairness"].items():
            rows.append(_fairness_row(_name(s), weight, f))
    return _columns(header, rows)


def _fairness_row(scenario: str, weight: str, f: Mapping[str, float]) -> list[str]:
    return [
        scenario,
        weight,
        f"{f['extra_eta_pct']:+.2f} %",
        f"{f['extra_eta_s_per_order']:+.1f}",
        f"{f['chosen_wait_mean_s_plain']:.0f} -> {f['chosen_wait_mean_s_fair']:.0f} s",
        f"{f['chosen_wait_p10_s_plain']:.0f} -> {f['chosen_wait_p10_s_fair']:.0f} s",
        f"{f['chosen_wait_min_s_plain']:.1f} -> {f['chosen_wait_min_s_fair']:.1f} s",
    ]


def render(doc: Mapping[str, Any]) -> str:
    o, scenarios = doc["options"], doc["scenarios"]
    worst = doc["polder_worst_ratio"]
    verdict = "PASS" if worst <= QUALITY_TARGET else "FAIL"
    return "\n\n".join(
        [
            f"match quality: {o['trials']} batches of {o['orders']} rides per scenario, seed "
            f"{o['seed']}, 10 km x 10 km around Amsterdam; total pickup ETA / offline optimum",
            quality_table(scenarios),
            f"polder worst batch: {worst:.4f} x optimum   target <= {QUALITY_TARGET}: {verdict}",
            "fairness (tolerance 30 s) against polder without fairness: ETA paid, and how long the"
            " chosen workers had waited",
            fairness_table(scenarios),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "python -m loadtests.matching_quality " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    scenarios = [
        scenario(opts, ratio, layout, opts.seed * 1_000 + n)
        for n, (ratio, layout) in enumerate((r, lay) for r in SUPPLY_RATIOS for lay in LAYOUTS)
    ]
    worst = max(s["methods"]["polder"]["ratio_worst"] for s in scenarios)
    doc: dict[str, Any] = {
        "options": asdict(opts),
        "config": asdict(MatchConfig()),
        "scenarios": scenarios,
        "polder_worst_ratio": worst,
        "target": QUALITY_TARGET,
    }
    print(render(doc))
    print(f"wrote {write_result(opts.out, command.strip(), doc)}")
    return 0 if worst <= QUALITY_TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
