"""Nearby-query benchmark: the in-memory LocationIndex against Redis GEOSEARCH, same data.

    python -m loadtests.nearby [--drivers 50000] [--queries 5000] [--radius 1000] [--limit 20]

Places the drivers over 25 km x 25 km around Amsterdam (part uniform, part clustered around
hotspots; seeded), runs the same random queries one at a time through ``LocationIndex.nearby``
in-process and, when a Redis answers at ``--redis``, through GEOSEARCH on a temporary key
(synchronous redis-py, one query at a time, so both sides answer one query at a time). Checks that
both return the same drivers for every query, and writes ``loadtests/results/nearby.json``.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from loadtests._report import fmt, table, write_result
from loadtests._stats import percentile
from polder.common.geoindex import LocationIndex, haversine_m
from polder.simulator.city import CENTRE_LAT, CENTRE_LNG, HOTSPOTS, Point, offset

HALF_SIDE_M = 12_500.0
CLUSTERED_SHARE = 0.4
# Redis rounds positions to 52-bit geohash cells (~0.6 m) and uses an earth radius 0.028 % larger.
BOUNDARY_SLACK_M, BOUNDARY_RELATIVE = 1.0, 3e-4

Hit = tuple[str, float]  # driver id, distance in metres
Ask = Callable[[float, float], list[Hit]]


@dataclass(frozen=True, slots=True)
class Options:
    drivers: int
    queries: int
    radius: float
    limit: int
    seed: int
    redis_url: str
    out: str


@dataclass(frozen=True, slots=True)
class Timing:
    total_s: float
    latencies_s: list[float]

    def doc(self) -> dict[str, float]:
        return {
            "queries_per_s": len(self.latencies_s) / self.total_s,
            "p50_us": percentile(self.latencies_s, 0.50) * 1e6,
            "p99_us": percentile(self.latencies_s, 0.99) * 1e6,
            "mean_us": self.total_s / len(self.latencies_s) * 1e6,
        }


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.nearby", description=__doc__)
    p.add_argument("--drivers", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=5_000)
    p.add_argument("--radius", type=float, default=1_000.0, help="metres")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                   help="Redis to compare with; the comparison is skipped if it does not answer")
    p.add_argument("--out", default="nearby", help="results file name (loadtests/results/OUT.json)")
    a = p.parse_args(argv)
    if a.drivers < 1 or a.queries < 1 or a.radius <= 0 or a.limit < 1:
        p.error("--drivers, --queries, --radius and --limit must be positive")
    return Options(a.drivers, a.queries, a.radius, a.limit, a.seed, a.redis, a.out)


def _uniform(rng: random.Random) -> Point:
    return offset(CENTRE_LAT, CENTRE_LNG, rng.uniform(-HALF_SIDE_M, HALF_SIDE_M),
                   rng.uniform(-HALF_SIDE_M, HALF_SIDE_M))


def _clustered(rng: random.Random) -> Point:
    lat, lng, spread = rng.choice(HOTSPOTS)
    return offset(lat, lng, rng.gauss(0.0, spread), rng.gauss(0.0, spread))


def city_points(n: int, rng: random.Random, clustered_share: float = CLUSTERED_SHARE
                ) -> list[Point]:
    return [_clustered(rng) if rng.random() < clustered_share else _uniform(rng) for _ in range(n)]


def build_index(drivers: Sequence[Point], now: float) -> tuple[LocationIndex, float]:
    index = LocationIndex(resolution=9, ttl_s=60.0)
    started = time.perf_counter()
    for i, (lat, lng) in enumerate(drivers):
        index.upsert(f"drv-{i:06d}", lat, lng, recorded_at=now - 1.0, seen_at=now)
    return index, time.perf_counter() - started


@dataclass(slots=True)
class Contender:
    name: str
    ask: Ask
    busy_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    answers: list[list[Hit]] = field(default_factory=list)

    def run(self, queries: Sequence[Point]) -> None:
        """Ask each query once, one at a time, timing each answer."""
        clock, ask = time.perf_counter, self.ask
        started = clock()
        for lat, lng in queries:
            t0 = clock()
            self.answers.append(ask(lat, lng))
            self.latencies_s.append(clock() - t0)
        self.busy_s += clock() - started

    @property
    def timing(self) -> Timing:
        return Timing(self.busy_s, self.latencies_s)


def race(queries: Sequence[Point], contenders: Sequence[Contender], block: int = 250) -> None:
    """Warm each contender up, then let them take turns on blocks of the same queries, so a
    burst of other load on the machine falls on both rather than on whichever ran then."""
    for c in contenders:
        for lat, lng in queries[:200]:
            c.ask(lat, lng)
    for start in range(0, len(queries), block):
        for c in contenders:
            c.run(queries[start : start + block])


def index_asker(index: LocationIndex, opts: Options, now: float) -> Ask:
    def ask(lat: float, lng: float) -> list[Hit]:
        found = index.nearby(lat, lng, opts.radius, opts.limit, now)
        return [(n.position.driver_id, n.distance_m) for n in found]

    return ask


def redis_asker(r: redis.Redis, key: str, opts: Options) -> Ask:
    """GEOSEARCH key FROMLONLAT lng lat BYRADIUS r m ASC COUNT limit WITHDIST."""

    def ask(lat: float, lng: float) -> list[Hit]:
        found: list[Any] = r.geosearch(
            key, longitude=lng, latitude=lat, radius=opts.radius, unit="m",
            sort="ASC", count=opts.limit, withdist=True,
        )
        return [(str(member), float(dist)) for member, dist in found]

    return ask


def connect_redis(url: str) -> redis.Redis | None:
    r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)
    try:
        r.ping()
    except redis.RedisError as exc:
        print(f"Redis at {url} does not answer ({exc}); skipping the GEOSEARCH comparison.")
        return None
    return r


def load_redis(r: redis.Redis, key: str, drivers: Sequence[Point], chunk: int = 5_000) -> float:
    started = time.perf_counter()
    for start in range(0, len(drivers), chunk):
        values: list[Any] = []
        for i in range(start, min(start + chunk, len(drivers))):
            lat, lng = drivers[i]
            values += [lng, lat, f"drv-{i:06d}"]
        r.geoadd(key, values)
    return time.perf_counter() - started


def geosearch_server_stats(r: redis.Redis) -> tuple[int, int]:
    """Calls and microseconds Redis itself has spent in GEOSEARCH (INFO commandstats)."""
    stats: dict[str, Any] = r.info("commandstats").get("cmdstat_geosearch", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


@dataclass(frozen=True, slots=True)
class Comparison:
    queries_differing: int
    only_radius_boundary: int  # every differing driver lies within the tolerance of the radius
    only_limit_tie: int  # or within the tolerance of the limit-th distance
    unexplained: int
    max_distance_diff_m: float
    examples: list[dict[str, Any]]


def tolerance_m(radius: float) -> float:
    return BOUNDARY_SLACK_M + BOUNDARY_RELATIVE * radius


def _explain(diff: set[str], points: dict[str, Point], q: Point, radius: float, kth: float) -> str:
    """Why two answers differ: drivers at the radius, or tied with the limit-th nearest."""
    tol = tolerance_m(radius)
    dists = [haversine_m(q[0], q[1], *points[d]) for d in diff]
    if all(abs(d - radius) <= tol for d in dists):
        return "radius"
    if all(abs(d - kth) <= tol or abs(d - radius) <= tol for d in dists):
        return "limit"
    return "unexplained"


def compare(queries: Sequence[Point], mine: list[list[Hit]], theirs: list[list[Hit]],
            points: dict[str, Point], opts: Options) -> Comparison:
    counts = {"radius": 0, "limit": 0, "unexplained": 0}
    max_diff = 0.0
    examples: list[dict[str, Any]] = []
    for q, a, b in zip(queries, mine, theirs, strict=True):
        da, db = dict(a), dict(b)
        for d in da.keys() & db.keys():
            max_diff = max(max_diff, abs(da[d] - db[d]))
        diff = da.keys() ^ db.keys()
        if not diff:
            continue
        kth = max([*da.values(), *db.values()]) if len(a) >= opts.limit else opts.radius
        kind = _explain(diff, points, q, opts.radius, kth)
        counts[kind] += 1
        if kind == "unexplained" and len(examples) < 5:
            examples.append({"query": q, "index_only": sorted(da.keys() - db.keys()),
                             "redis_only": sorted(db.keys() - da.keys())})
    return Comparison(sum(counts.values()), counts["radius"], counts["limit"],
                      counts["unexplained"], max_diff, examples)


def _mean_len(answers: list[list[Hit]]) -> float:
    return sum(map(len, answers)) / len(answers)


def _race_with_redis(r: redis.Redis, opts: Options, drivers: Sequence[Point],
                     queries: Sequence[Point], mine: Contender) -> dict[str, Any]:
    """Load the drivers into a fresh key, race, compare answers; the key is always deleted."""
    key = f"polder:bench:nearby:{uuid.uuid4().hex}"
    try:
        load_s = load_redis(r, key, drivers)
        theirs = Contender("redis", redis_asker(r, key, opts))
        calls0, usec0 = geosearch_server_stats(r)
        race(queries, [mine, theirs])
        calls1, usec1 = geosearch_server_stats(r)
    finally:
        r.delete(key)
    points = {f"drv-{i:06d}": p for i, p in enumerate(drivers)}
    return {
        "load_s": load_s,
        **theirs.timing.doc(),
        "server_us_per_call": (usec1 - usec0) / max(1, calls1 - calls0),
        "mean_results": _mean_len(theirs.answers),
        "comparison": asdict(compare(queries, mine.answers, theirs.answers, points, opts)),
        "redis_version": r.info("server").get("redis_version"),
    }


def _ratios(index: dict[str, float], red: dict[str, float]) -> dict[str, float]:
    return {
        "queries_per_s_ratio": index["queries_per_s"] / red["queries_per_s"],
        "p50_ratio": red["p50_us"] / index["p50_us"],
        "p99_ratio": red["p99_us"] / index["p99_us"],
    }


def run(opts: Options, drivers: Sequence[Point], queries: Sequence[Point]) -> dict[str, Any]:
    now = time.time()
    index, build_s = build_index(drivers, now)
    mine = Contender("index", index_asker(index, opts, now))
    doc: dict[str, Any] = {
        "options": {k: v for k, v in asdict(opts).items() if k not in ("redis_url", "out")},
    }
    r = connect_redis(opts.redis_url)
    if r is None:
        race(queries, [mine])
    else:
        doc["redis"] = _race_with_redis(r, opts, drivers, queries, mine)
    doc["index"] = {
        "build_s": build_s, **mine.timing.doc(), "mean_results": _mean_len(mine.answers),
    }
    if r is not None:
        doc["index_vs_redis"] = _ratios(doc["index"], doc["redis"])
    return doc


def _p50_p99(figures: dict[str, float]) -> str:
    return f"{fmt(figures['p50_us'], ' µs')} / {fmt(figures['p99_us'], ' µs')}"


def render(doc: dict[str, Any]) -> str:
    o, idx, red = doc["options"], doc["index"], doc.get("redis")
    rows = [
        ("index: build (upserts)",
         f"{fmt(idx['build_s'], ' s', 2)} ({fmt(o['drivers'] / idx['build_s'], '/s', 0)})"),
        ("index: queries/s", fmt(idx["queries_per_s"], "", 0)),
        ("index: latency p50 / p99", _p50_p99(idx)),
        ("index: mean drivers returned", fmt(idx["mean_results"], "", 2)),
    ]
    if red is None:
        rows.append(("redis", "skipped (no Redis answered)"))
    else:
        c, ratios = red["comparison"], doc["index_vs_redis"]
        ratio = ratios["queries_per_s_ratio"]
        rows += [
            ("redis GEOSEARCH: queries/s", fmt(red["queries_per_s"], "", 0)),
            ("redis GEOSEARCH: latency p50 / p99", _p50_p99(red)),
            ("redis GEOSEARCH: server time per call", fmt(red["server_us_per_call"], " µs")),
            ("index speed / redis speed (queries/s)",
             f"{ratio:.2f}x   target > 1: {'PASS' if ratio > 1 else 'FAIL'}"),
            ("redis latency / index latency: p50, p99",
             f"{ratios['p50_ratio']:.2f}x, {ratios['p99_ratio']:.2f}x (> 1: index faster)"),
            ("queries whose driver sets differ", f"{c['queries_differing']} of {o['queries']}"),
            ("  explained: radius boundary / limit tie",
             f"{c['only_radius_boundary']} / {c['only_limit_tie']} "
             f"(within {tolerance_m(o['radius']):g} m)"),
            ("  unexplained mismatches", str(c["unexplained"])),
            ("max distance difference, same driver", fmt(c["max_distance_diff_m"], " m", 2)),
        ]
    title = (f"nearby: {o['drivers']:,} drivers, {o['queries']:,} queries, "
             f"radius {o['radius']:g} m, limit {o['limit']}, one query at a time")
    return table(title, rows)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "python -m loadtests.nearby " + shlex.join(sys.argv[1:] if argv is None else argv)
    rng = random.Random(opts.seed)
    drivers = city_points(opts.drivers, rng)
    queries = city_points(opts.queries, rng, clustered_share=0.7)
    doc = run(opts, drivers, queries)
    print(render(doc))
    print(f"wrote {write_result(opts.out, command.strip(), doc)}")
    unexplained = doc.get("redis", {}).get("comparison", {}).get("unexplained", 0)
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
