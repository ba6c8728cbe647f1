"""Turning one ingest run's scrapes and client tallies into figures, and printing them."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from loadtests._loadgen import PHASES, Mode, Phase, Tally, Window
from loadtests._report import fmt, host_row, table
from loadtests._stats import Scrape, bucket_delta, bucket_quantile, bucket_share_within, percentile

TARGET_PINGS_PER_S = 50_000.0
TARGET_P99_S = 0.250
ACCEPTED = "polder_location_pings_accepted_total"
TO_INDEX = "polder_location_ping_to_index_seconds"
LOOP_LAG = "polder_event_loop_lag_seconds"
LAG = "polder_consumer_lag_records"
INDEXER, TRACES = "location-index", "location-traces"


@dataclass(slots=True)
class Run:
    """What one mode's run observed, before it is summarised."""

    mode: Mode
    options: dict[str, Any]
    window: Window
    before: Scrape  # just before the load starts
    scrapes: list[Scrape] = field(default_factory=list)  # window start, every second, window end
    drained: Scrape | None = None
    drain_s: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)
    tallies: dict[Phase, Tally] = field(default_factory=lambda: {p: Tally() for p in PHASES})


def summarise(run: Run) -> dict[str, Any]:
    """End-to-end pings/s counts the pings whose event reached the index inside the window:
    events indexed (the ping→index histogram's count) x accepted pings per published event."""
    assert run.drained is not None
    a, b = run.scrapes[0], run.scrapes[-1]
    span = b.at - a.at
    everything = Tally()
    for t in run.tallies.values():
        everything.add(t)
    published = everything.requests_with_accepted  # an answer with accepted > 0 is one event
    per_event = everything.pings_accepted / max(1, published)
    indexed_events = b.total(f"{TO_INDEX}_count") - a.total(f"{TO_INDEX}_count")
    buckets = bucket_delta(a.buckets(TO_INDEX), b.buckets(TO_INDEX))
    loop_lag = bucket_delta(a.buckets(LOOP_LAG), b.buckets(LOOP_LAG))
    lags = [s.total(LAG, consumer=INDEXER) for s in run.scrapes]
    indexed_total = run.drained.total(f"{TO_INDEX}_count") - run.before.total(f"{TO_INDEX}_count")
    return {
        "mode": run.mode,
        "options": run.options,
        "window_s": span,
        "end_to_end": {
            "indexed_pings_per_s": indexed_events * per_event / span,
            "indexed_events": indexed_events,
            "pings_per_event": per_event,
            "service_accepted_pings_per_s": (b.total(ACCEPTED) - a.total(ACCEPTED)) / span,
            "ping_to_index_p50_s": bucket_quantile(buckets, 0.50),
            "ping_to_index_p99_s": bucket_quantile(buckets, 0.99),
            "ping_to_index_within_target_share": bucket_share_within(buckets, TARGET_P99_S),
            "ping_to_index_buckets": buckets,
            "service_loop_lag_p50_s": bucket_quantile(loop_lag, 0.50),
            "service_loop_lag_p99_s": bucket_quantile(loop_lag, 0.99),
            "index_lag_records": {
                "window_start": lags[0], "window_end": lags[-1], "max": max(lags),
            },
            "traces_lag_records_window_end": b.total(LAG, consumer=TRACES),
            "drain_after_load_s": run.drain_s,
            "events_published": published,
            "events_not_indexed_after_drain": published - indexed_total,
        },
        "ping_to_index_p99_by_slice": p99_by_slice(run.scrapes),
        "timeline": _timeline(run.scrapes, per_event),
        "client": _client(run, everything),
        "cpu_cores_busy": run.cpu,
        "targets": {"pings_per_s": TARGET_PINGS_PER_S, "ping_to_index_p99_s": TARGET_P99_S},
    }


SLICE_S = 15.0


def p99_by_slice(scrapes: list[Scrape], slice_s: float = SLICE_S) -> list[dict[str, float]]:
    """ping→index p99 over consecutive slices of the window (from the once-a-second scrapes):
    a latency that grows as the run goes on (the broker's log growing, say) shows here, where
    the window's one p99 would only say that it failed."""
    out: list[dict[str, float]] = []
    if not scrapes:
        return out
    start = prev = scrapes[0]
    for cur in scrapes[1:]:
        if cur.at - prev.at >= slice_s - 0.5 or cur is scrapes[-1]:
            buckets = bucket_delta(prev.buckets(TO_INDEX), cur.buckets(TO_INDEX))
            out.append({
                "from_s": round(prev.at - start.at, 1),
                "to_s": round(cur.at - start.at, 1),
                "p99_s": bucket_quantile(buckets, 0.99),
                "within_target_share": bucket_share_within(buckets, TARGET_P99_S),
            })
            prev = cur
    return out


def _client(run: Run, everything: Tally) -> dict[str, Any]:
    win = run.tallies["window"]
    span = run.window.measure_to - run.window.measure_from
    return {
        "requests_per_s": win.requests / span,
        "accepted_pings_per_s": win.pings_accepted / span,
        "latency_p50_s": percentile(win.latencies_s, 0.50),
        "latency_p99_s": percentile(win.latencies_s, 0.99),
        "latency_max_s": max(win.latencies_s, default=float("nan")),
        "window": _tally_doc(win),
        "all_phases": _tally_doc(everything),
    }


def _timeline(scrapes: list[Scrape], per_event: float) -> list[dict[str, float]]:
    rows = []
    count = f"{TO_INDEX}_count"
    for prev, cur in zip(scrapes, scrapes[1:], strict=False):
        dt = cur.at - prev.at
        rows.append({
            "t_s": round(cur.at - scrapes[0].at, 2),
            "accepted_pings_per_s": (cur.total(ACCEPTED) - prev.total(ACCEPTED)) / dt,
            "indexed_pings_per_s": (cur.total(count) - prev.total(count)) * per_event / dt,
            "index_lag_records": cur.total(LAG, consumer=INDEXER),
            "traces_lag_records": cur.total(LAG, consumer=TRACES),
        })
    return rows


def _tally_doc(t: Tally) -> dict[str, Any]:
    return {
        "requests": t.requests,
        "pings_sent": t.pings_sent,
        "pings_accepted": t.pings_accepted,
        "pings_rejected": sum(t.rejected.values()),
        "rejected_by_reason": dict(t.rejected),
        "errors": dict(t.errors),
        "drivers_dropped": t.drivers_dropped,
    }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def render(doc: dict[str, Any]) -> str:
    e2e, client, cpu, o = doc["end_to_end"], doc["client"], doc["cpu_cores_busy"], doc["options"]
    rate, p99 = e2e["indexed_pings_per_s"], e2e["ping_to_index_p99_s"]
    allp, lag = client["all_phases"], e2e["index_lag_records"]
    latencies = (client[k] * 1000 for k in ("latency_p50_s", "latency_p99_s", "latency_max_s"))
    rows = [
        ("end-to-end pings/s (reached index)",
         f"{fmt(rate, '', 0)}   target ≥ 50,000: {_verdict(rate >= TARGET_PINGS_PER_S)}"),
        ("service accepted pings/s (metrics)", fmt(e2e["service_accepted_pings_per_s"], "", 0)),
        ("ping→index p50 (bucket-interpolated)", fmt(e2e["ping_to_index_p50_s"] * 1000, " ms")),
        ("ping→index p99 (bucket-interpolated)",
         f"{fmt(p99 * 1000, ' ms')}   target ≤ 250 ms: {_verdict(p99 <= TARGET_P99_S)}"),
        (f"  p99 by {SLICE_S:g} s of the window",
         " / ".join(fmt(x["p99_s"] * 1000, "", 0) for x in doc["ping_to_index_p99_by_slice"])
         + " ms"),
        # The histogram has a bucket bound at the target, so this share is exact; the p99 above
        # is within the target exactly when it is at least 99 %.
        ("  indexed within 250 ms (exact: a bucket bound)",
         f"{e2e['ping_to_index_within_target_share']:.2%}   by slice: "
         + " / ".join(f"{x['within_target_share']:.2%}"
                      for x in doc["ping_to_index_p99_by_slice"])),
        ("service event-loop lag p50 / p99",
         f"{fmt(e2e['service_loop_lag_p50_s'] * 1000, ' ms')} / "
         f"{fmt(e2e['service_loop_lag_p99_s'] * 1000, ' ms')}"),
        ("index lag start / end / max (records)",
         f"{lag['window_start']:.0f} / {lag['window_end']:.0f} / {lag['max']:.0f}"),
        ("trace-writer lag at window end", f"{e2e['traces_lag_records_window_end']:.0f} records"),
        ("index caught up after load stopped",
         f"{fmt(e2e['drain_after_load_s'], ' s', 2)} "
         f"({e2e['events_not_indexed_after_drain']:.0f} events missing)"),
        ("client accepted pings/s", fmt(client["accepted_pings_per_s"], "", 0)),
        ("client requests/s", fmt(client["requests_per_s"], "", 0)),
        ("client latency p50 / p99 / max", " / ".join(fmt(v, " ms") for v in latencies)),
        ("pings sent / accepted / rejected (all)",
         f"{allp['pings_sent']:,} / {allp['pings_accepted']:,} / {allp['pings_rejected']:,}"),
        ("rejections by reason", str(allp["rejected_by_reason"] or "none")),
        ("errors (drivers dropped)", f"{allp['errors'] or 'none'} ({allp['drivers_dropped']})"),
        ("CPU cores busy: service / trace writer / loadgen",
         f"{cpu['service']:.2f} / {cpu.get('traces', math.nan):.2f} / {cpu['loadgen']:.2f}"),
        ("CPU cores busy: broker / postgres / harness",
         f"{cpu['broker']:.2f} / {cpu['postgres']:.2f} / {cpu['harness']:.2f}"),
        ("CPU cores busy: whole box / anything else",
         f"{cpu['box']:.2f} of {os.cpu_count()} / {cpu['other']:.2f}"),
        *([host_row(doc["host_loop_s"])] if "host_loop_s" in doc else []),
    ]
    offered = f"{o['rate']:,.0f} pings/s offered" if o["rate"] else "unpaced (closed loop)"
    title = (
        f"ingest over {doc['mode'].upper()}: {o['drivers']:,} drivers, batch {o['batch']}, "
        f"{o['procs']} procs x {o['concurrency']} in flight, {offered}, "
        f"{doc['window_s']:.1f} s window"
    )
    return table(title, rows)
