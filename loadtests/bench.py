"""Every benchmark, one after another, in bounded time, and the table of figures.

    .venv/bin/python -m loadtests.bench [--only NAME ...] [--timeout-s 600]

Each benchmark runs as its own process with bounded options (shorter windows than its own
defaults where that keeps the figure meaningful) and writes `loadtests/results/bench-*.json`;
this reads those files and writes the table to `loadtests/results/bench.md` (and prints it):
target, measured figure, PASS/FAIL against DESIGN.md §8, and the command. A benchmark that
fails or times out is a row saying so, and the exit code is 1; a missed target is a FAIL row,
not an error. `make bench` runs this.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadtests._report import RESULTS

Row = tuple[str, bool | None]  # measured figure, passed (None: no target)


@dataclass(frozen=True)
class Bench:
    name: str
    what: str
    target: str
    module: str
    args: tuple[str, ...]
    result: str  # results file the run writes
    read: Callable[[dict[str, Any]], Row]

    @property
    def command(self) -> str:
        return " ".join(["python -m", self.module, *self.args])


def _ingest(d: dict[str, Any]) -> Row:
    e = d["end_to_end"]
    rate, p99 = e["indexed_pings_per_s"], e["ping_to_index_p99_s"]
    ok = rate >= d["targets"]["pings_per_s"] and p99 <= d["targets"]["ping_to_index_p99_s"]
    within = e["ping_to_index_within_target_share"]  # exact: the histogram has that bound
    return (
        f"{rate:,.0f} pings/s, ping→index p99 {p99 * 1000:.0f} ms "
        f"({within:.2%} of batches within 250 ms)",
        ok,
    )


def _nearby(d: dict[str, Any]) -> Row:
    r = d["index_vs_redis"]
    ratio = r["queries_per_s_ratio"]
    return f"{ratio:.1f} × Redis's queries/s, p99 {r['p99_ratio']:.1f} × better", ratio > 1


def _quality(d: dict[str, Any]) -> Row:
    worst = d["polder_worst_ratio"]
    greedy = [
        s["methods"]["greedy"]["ratio_mean"] for s in d["scenarios"] if "greedy" in s["methods"]
    ]
    vs = f"; sequential greedy {min(greedy):.2f}–{max(greedy):.2f} ×" if greedy else ""
    return f"worst batch {worst:.3f} × optimum{vs}", worst <= 1.01


def _dispatch(d: dict[str, Any]) -> Row:
    """The benchmark's own verdict: order→first offer *published* (after the offers' commit and
    the relay), beyond the window; not the batch clock's figure, which leaves those out."""
    t = d["target"]
    rate = d["options"]["orders_per_s"]
    return (
        f"p99 beyond the window {t['measured_ms']:,.0f} ms at {rate:g} orders/s "
        f"(box {d['cpu_cores']['box']:.2f} cores busy)",
        bool(t["met"]),
    )


def _dispatch_stress(d: dict[str, Any]) -> Row:
    """The figure of ``_dispatch``, no verdict: §8's 10 000 workers cannot carry 200 orders/s
    at real trip lengths (they would all be busy within a minute), so trips of 8 s are a load
    on the API, not the target's scenario."""
    return _dispatch(d)[0], None


def _billing(d: dict[str, Any]) -> Row:
    t = d["throughput"]
    ok = t["events_per_s"] >= 25_000 and all(v is True for v in d["checks"].values())
    measured = (
        f"{t['events_per_s']:,.0f} events/s ({t['driver_order_events_per_s']:,.0f}/s of them "
        "driver, order and dispatch events)"
    )
    return measured, ok


def _statement(d: dict[str, Any]) -> Row:
    worst = {
        rng: max(r["p50_ms"] for k, r in d["results"].items() if k.startswith(f"{rng}/"))
        for rng in ("day", "week", "month")
    }
    text = ", ".join(f"{rng} p50 ≤ {ms:,.0f} ms" for rng, ms in worst.items())
    return text + " (worst policy)", None


def _scale(d: dict[str, Any]) -> Row:
    return (
        f"{d['largest_sustained_workers']} workers, "
        f"{d['largest_sustained_orders_per_min']:g} orders/min with dispatch p99 within target",
        None,
    )


BENCHES = (
    Bench(
        "ingest",
        "location ingest, WebSocket frames of 50, into the index, 51 000 pings/s offered "
        "for a minute",
        "≥ 50 000 pings/s, p99 ≤ 250 ms",
        "loadtests.ingest",
        # Paced just above the target rate: latency at a sustained rate, not the queueing of a
        # closed loop (which grows with whatever is in flight); pings/s is what arrived. A
        # minute, not less: the target says sustained, and the embedded broker's fetches slow
        # as its log grows (the report prints each 15 s of the window).
        ("--mode", "ws", "--seconds", "60", "--rate", "51000", "--out", "bench-ingest"),
        "bench-ingest-ws.json",
        _ingest,
    ),
    Bench(
        "nearby",
        "nearby on 50 000 drivers vs Redis GEOSEARCH",
        "faster than Redis",
        "loadtests.nearby",
        ("--queries", "3000", "--out", "bench-nearby"),
        "bench-nearby.json",
        _nearby,
    ),
    Bench(
        "matching",
        "match quality, total pickup ETA vs offline optimum",
        "≤ 1.01 × optimum",
        "loadtests.matching_quality",
        ("--seed", "1", "--trials", "10", "--out", "bench-matching_quality"),
        "bench-matching_quality.json",
        _quality,
    ),
    Bench(
        "dispatch",
        "dispatch order→offer beyond the 1 s window, 10 000 workers, 200 orders/s: a rush "
        "(drivers keep the trips they accept)",
        "p99 ≤ 100 ms",
        "loadtests.dispatch_latency",
        # 10 000 workers carry 200 orders/s for under a minute at any real trip length: the
        # target's load is a rush, in which no trip accepted during it reaches its next step.
        ("--seconds", "20", "--trips", "hold", "--out", "bench-dispatch_latency"),
        "bench-dispatch_latency.json",
        _dispatch,
    ),
    Bench(
        "dispatch-trips",
        "the same with every trip driven to the end in 8 s (~6 requests an order instead of 2)",
        "none in §8: a stress figure (the box's capacity for the API's requests)",
        "loadtests.dispatch_latency",
        ("--seconds", "20", "--out", "bench-dispatch_latency_trips"),
        "bench-dispatch_latency_trips.json",
        _dispatch_stress,
    ),
    Bench(
        "billing",
        "billing consumer, a city's hour of events",
        "≥ 25 000 events/s",
        "loadtests.billing_throughput",
        ("--out", "bench-billing_throughput"),
        "bench-billing_throughput.json",
        _billing,
    ),
    Bench(
        "statement",
        "statement for a worker with a month of history",
        "none in §8",
        "loadtests.statement_latency",
        ("--repeat", "3", "--out", "bench-statement_latency"),
        "bench-statement_latency.json",
        _statement,
    ),
    Bench(
        "scale",
        "the simulated city at scale on this box",
        "largest load within dispatch target",
        "loadtests.simulate_scale",
        # three rounds keep it within the per-benchmark timeout (a round is 1.5-3 min)
        ("--steps", "400,800,1200", "--out", "bench-simulate_scale"),
        "bench-simulate_scale.json",
        _scale,
    ),
)


STOP_GRACE_S = 60.0


def stop_in_order(proc: subprocess.Popen[str]) -> None:
    """Ask a benchmark that ran out of time to stop (SIGTERM: each unwinds like Ctrl-C and stops
    the Postgres, broker and services it started, some in sessions of their own that a kill of
    the benchmark alone would leave running); kill it only if it does not within the grace."""
    proc.terminate()
    try:
        proc.communicate(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def run(bench: Bench, timeout_s: float) -> tuple[str, str, float]:
    """Run one benchmark; (measured, verdict, seconds)."""
    started = time.monotonic()
    path = RESULTS / bench.result
    path.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", bench.module, *bench.args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_in_order(proc)
        return f"did not finish within {timeout_s:.0f} s", "ERROR", time.monotonic() - started
    took = time.monotonic() - started
    if not path.exists():
        tail = (out + err).strip().splitlines()[-3:]
        return f"no result (exit {proc.returncode}): {' / '.join(tail)}", "ERROR", took
    measured, ok = bench.read(json.loads(path.read_text()))
    verdict = "—" if ok is None else ("PASS" if ok else "FAIL")
    if proc.returncode != 0:  # the benchmark saw errors in the answers it checked
        verdict = f"{verdict}, run exit {proc.returncode}"
    return measured, verdict, took


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", nargs="*", choices=[b.name for b in BENCHES])
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per benchmark")
    args = parser.parse_args()
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    rows = [
        "| what | target (DESIGN.md §8) | measured | verdict | command |",
        "|---|---|---|---|---|",
    ]
    failed = False
    for bench in chosen:
        print(f"… {bench.name}: {bench.command}", flush=True)
        measured, verdict, took = run(bench, args.timeout_s)
        print(f"  {verdict}: {measured} ({took:.0f} s)", flush=True)
        failed |= verdict.startswith("ERROR") or "exit" in verdict
        rows.append(
            f"| {bench.what} | {bench.target} | {measured} | {verdict} | `{bench.command}` |"
        )
    table = "\n".join(rows) + "\n"
    (RESULTS / "bench.md").write_text(table)
    print("\n" + table)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
