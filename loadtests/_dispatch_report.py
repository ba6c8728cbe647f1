"""Figures of a dispatch-latency run: per-order latencies from the service's events, batch
figures from its histograms, the load generators' tallies, CPU; the printed table."""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from loadtests._dispatch_load import CustomerReport, DriverReport, Offer
from loadtests._report import fmt, host_row, table
from loadtests._stats import Scrape, bucket_delta, bucket_quantile, percentile

if TYPE_CHECKING:
    from loadtests.dispatch_latency import Run

TARGET_BEYOND_P99_MS = 100.0
SOLVE = "polder_dispatch_batch_solve_seconds"
APPLY = "polder_dispatch_batch_apply_seconds"
BATCH_ORDERS = "polder_dispatch_batch_orders"
TO_OFFER = "polder_dispatch_order_to_offer_seconds"
HTTP_LATENCY = "polder_http_request_duration_seconds"
TO_ASSIGNMENT = "polder_dispatch_order_to_assignment_seconds"
OFFERS = "polder_dispatch_offers_total"
EXPIRED = "polder_dispatch_orders_expired_total"
OPEN = "polder_dispatch_open_orders"
AVAILABLE = "polder_dispatch_available_workers"


def dist(samples: Sequence[float], window_s: float | None = None) -> dict[str, Any]:
    """n, p50, p99, max in ms; with ``window_s``, also the part beyond it (clamped at 0)."""
    out: dict[str, Any] = {
        "n": len(samples),
        "p50_ms": percentile(samples, 0.50) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
        "max_ms": max(samples) * 1e3 if samples else math.nan,
    }
    if window_s is not None:
        beyond = [max(0.0, s - window_s) for s in samples]
        out["beyond_window_p50_ms"] = percentile(beyond, 0.50) * 1e3
        out["beyond_window_p99_ms"] = percentile(beyond, 0.99) * 1e3
    return out


def _hist(before: Scrape, after: Scrape, name: str, **labels: str) -> dict[str, float]:
    b = bucket_delta(before.buckets(name, **labels), after.buckets(name, **labels))
    return {
        "count": after.total(f"{name}_count", **labels) - before.total(f"{name}_count", **labels),
        "p50": bucket_quantile(b, 0.50),
        "p99": bucket_quantile(b, 0.99),
    }


def _latencies(run: Run) -> dict[str, Any]:
    w, reader, window_s = run.window, run.reader, run.options["window"]
    placed = {o: t for o, t in reader.placed.items() if w.measure_from <= t <= w.measure_to}
    first = reader.first_offers()
    received: dict[str, tuple[float, str]] = {}
    for d in run.drivers:
        received.update(d.offers_received)
    sent = {o: ts[0] for c in run.customers for o, ts in c.orders.items()}
    batch_clock: list[float] = []
    published: list[float] = []
    from_request: list[float] = []
    feed: list[float] = []
    topic: list[float] = []
    assignment: list[float] = []
    for order_id, t in placed.items():
        offer = first.get(order_id)
        if offer is not None:
            batch_clock.append(offer.at - t)
            published.append(offer.published - t)
            if order_id in sent:
                from_request.append(offer.published - sent[order_id])
            if offer.offer_id in received:
                at, via = received[offer.offer_id]
                (feed if via == "feed" else topic).append(at - t)
        if order_id in reader.assigned:
            assignment.append(reader.assigned[order_id] - t)
    in_window = [o for o in reader.offers if w.measure_from <= o.at <= w.measure_to]
    # The API processes fan offers out to the feeds from the topic: an offer reaches a feed
    # this long after the outbox relay published it (fetch, one read of the offer, the push).
    relay = [received[o.offer_id][0] - o.published for o in in_window
             if received.get(o.offer_id, (0.0, ""))[1] == "feed"]
    return {
        "orders": {
            "placed_in_window": len(placed),
            "placed_per_s": len(placed) / (w.measure_to - w.measure_from),
            "offered": sum(o in first for o in placed),
            "never_offered": sum(o not in first for o in placed),
            "assigned": sum(o in reader.assigned for o in placed),
            "expired": sum(o in reader.expired for o in placed),
            "completed": sum(o in reader.completed for o in placed),
            "unsettled_after_drain": sum(
                o not in reader.assigned and o not in reader.expired for o in placed
            ),
        },
        "order_to_first_offer": {
            "batch_clock": dist(batch_clock, window_s),
            "published": dist(published, window_s),
            "published_from_request_sent": dist(from_request, window_s),
            "on_feed": dist(feed, window_s),
            "via_topic": dist(topic, window_s),
        },
        "order_to_assignment": dist(assignment),
        # the offer's envelope time is when its part began writing (the key's name is older)
        "batch_start_to_published": dist([o.published - o.at for o in in_window]),
        "first_part_to_published": dist(_first_part_waits(in_window)),
        "late_orders": late_orders(placed, first, reader.offers, window_s),
        "published_to_feed": dist(relay),
    }


LATE_S = 0.1  # the target: beyond the window by more than this is late


def late_orders(
    placed: dict[str, float], first: dict[str, Offer], offers: list[Offer], window_s: float
) -> dict[str, Any]:
    """The orders whose first offer was published more than ``LATE_S`` beyond the window, by
    why: how many batches began writing after the order was placed without offering it
    (``batches_missed``: 0, it was in the first batch after it and its part came late; 1 or
    more, the order was not in that batch: committed after it read the orders, or not
    matched there) and which part of its batch carried it (0: the oldest orders'). Batches
    are told apart by ``batch_id`` and begin when their first part is stamped, which is a
    solve after they read the orders: an order placed in between counts a batch missed that
    it could not be in (it is late only if it then waits long for the next one). A batch
    that made no offer is not seen, and a part is told by its offers' stamp, which an offer
    whose order or worker changed after the part began carries later (see
    ``_first_part_waits``): a count, not an exact ledger."""
    stamps: dict[str, set[float]] = {}
    for o in offers:
        stamps.setdefault(o.batch_id, set()).add(o.at)
    parts = {batch: sorted(ats) for batch, ats in stamps.items()}  # each part's stamp, in order
    begun = sorted((ats[0], batch) for batch, ats in parts.items())
    starts = [t for t, _ in begun]
    rank = {batch: i for i, (_, batch) in enumerate(begun)}
    by_missed: Counter[int] = Counter()
    by_part: Counter[int] = Counter()
    for order_id, t in placed.items():
        offer = first.get(order_id)
        if offer is None or offer.published - t - window_s <= LATE_S:
            continue
        missed = rank[offer.batch_id] - bisect.bisect_right(starts, t)
        part = parts[offer.batch_id].index(offer.at)
        by_missed[missed] += 1
        by_part[part] += 1
    return {
        "n": by_missed.total(),
        "by_batches_missed": dict(sorted(by_missed.items())),
        "by_part": dict(sorted(by_part.items())),
    }


def _first_part_waits(offers: list[Offer]) -> list[float]:
    """Written → published for the offers of each batch's first part (the oldest orders',
    written first: the offers stamped with the batch's earliest envelope time). Approximate:
    an offer is stamped no earlier than its worker's or order's last change, so one whose row
    changed after its part began is left out (and a batch whose first part's offers all were
    would count its second)."""
    first_at: dict[str, float] = {}
    for o in offers:
        first_at[o.batch_id] = min(o.at, first_at.get(o.batch_id, math.inf))
    return [o.published - o.at for o in offers if o.at == first_at[o.batch_id]]


def _batches(run: Run) -> dict[str, Any]:
    w = run.window
    at: dict[str, float] = {}
    per_batch: Counter[str] = Counter()
    for o in run.reader.offers:
        if w.measure_from <= o.at <= w.measure_to:
            at[o.batch_id] = o.at
            per_batch[o.batch_id] += 1
    times = sorted(at.values())
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    sizes = list(per_batch.values())
    return {
        "with_offers": len(times),
        "interval": dist(gaps),
        "offers_per_batch_p50": percentile(sizes, 0.5),
        "offers_per_batch_max": max(sizes) if sizes else math.nan,
    }


def _outcomes(run: Run) -> dict[str, int]:
    """Offers made, and answers, by their event time inside the window."""
    w, reader = run.window, run.reader
    out: Counter[str] = Counter()
    out["made"] = sum(w.measure_from <= o.at <= w.measure_to for o in reader.offers)
    for outcome, t in reader.resolved.values():
        if w.measure_from <= t <= w.measure_to:
            out[outcome] += 1
    return {k: out[k] for k in ("made", "accepted", "declined", "expired", "withdrawn")}


def _service(run: Run) -> dict[str, Any]:
    before, after = run.scrapes[0], run.scrapes[-1]
    series = run.scrapes
    offers = {
        outcome: after.total(OFFERS, outcome=outcome) - before.total(OFFERS, outcome=outcome)
        for outcome in ("made", "accepted", "declined", "expired")
    }
    return {
        "solve_s": _hist(before, after, SOLVE),
        "apply_s": _hist(before, after, APPLY),
        "batch_orders": _hist(before, after, BATCH_ORDERS),
        "order_to_offer_s": _hist(before, after, TO_OFFER),
        "order_to_assignment_s": _hist(before, after, TO_ASSIGNMENT),
        # Inside the API's app (from its middleware in to the answer out): a request's time in
        # the client's figure beyond this waited before the app saw it (the loop, the socket).
        "in_app_s": {
            name: _hist(before, after, HTTP_LATENCY, route=route)
            for name, route in (("place_order", "/v1/orders"),
                                ("accept", "/v1/offers/{offer_id}/accept"))
        },
        "offers_total": offers,
        "orders_expired": after.total(EXPIRED) - before.total(EXPIRED),
        "available_workers_min": min(s.total(AVAILABLE) for s in series),
        "available_workers_max": max(s.total(AVAILABLE) for s in series),
        "open_orders_max": max(s.total(OPEN) for s in series),
        "metrics_scrape": dist(run.scrape_latency_s),
    }


def _processes(run: Run) -> list[DriverReport | CustomerReport]:
    return [*run.drivers, *run.customers]


def _client(run: Run) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {}
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in _processes(run):
        for route, xs in r.latencies_s.items():
            latencies.setdefault(route, []).extend(xs)
        calls.update(r.calls)
        errors.update(r.errors)
    created = {o: ts for c in run.customers for o, ts in c.orders.items()}
    outcomes: Counter[str] = Counter()
    for d in run.drivers:
        outcomes.update(d.outcomes)
    waits = [w for r in _processes(run) for w in r.connection_waits_s]
    return {
        "requests": dict(calls),
        "connection_wait": dist(waits),
        "latency": {route: dist(xs) for route, xs in sorted(latencies.items())},
        "orders_created": len(created),
        "late_order_starts": sum(c.late_starts for c in run.customers),
        "drivers_online": sum(d.online for d in run.drivers),
        "feeds_open": sum(d.feeds for d in run.drivers),
        "positions_published": sum(d.positions_published for d in run.drivers),
        "driver_answers": dict(outcomes),
        "errors": dict(errors),
    }


def _checks(run: Run) -> list[str]:
    """Things that must hold whatever the load; each failure is named."""
    failed: list[str] = []
    reader = run.reader
    created = {o for c in run.customers for o in c.orders}
    missing = created - reader.placed.keys()
    if missing:
        failed.append(f"{len(missing)} orders created (201) have no placed event")
    if reader.not_create_time:
        failed.append(f"{reader.not_create_time} records without a CreateTime timestamp")
    on_feed = {o for d in run.drivers for o, (_, via) in d.offers_received.items()
               if via == "feed"}
    offered_at = {o.offer_id: o.at for o in reader.offers}
    unheard = [o for d in run.drivers for o in d.feed_offers_on_topic
               if o not in on_feed and offered_at.get(o, math.inf) <= run.window.measure_to]
    if unheard:
        failed.append(f"{len(unheard)} offers to feed drivers never reached their feed")
    for r in _processes(run):
        if r.fatal:
            failed.append(f"load process {r.worker}: {r.fatal}")
    return failed


def _timeline(run: Run) -> list[dict[str, Any]]:
    reader, first = run.reader, run.reader.first_offers()
    rows = []
    for prev, cur in zip(run.scrapes, run.scrapes[1:], strict=False):
        rows.append({
            "t": round(cur.at - run.window.measure_from, 2),
            "placed": sum(prev.at < t <= cur.at for t in reader.placed.values()),
            "first_offers": sum(prev.at < o.at <= cur.at for o in first.values()),
            "offers_made": cur.total(OFFERS, outcome="made") - prev.total(OFFERS, outcome="made"),
            "open_orders": cur.total(OPEN),
            "available_workers": cur.total(AVAILABLE),
        })
    return rows


def summarise(run: Run) -> dict[str, Any]:
    lat = _latencies(run)
    client = _client(run)
    failed = _checks(run)
    if lat["orders"]["never_offered"]:
        failed.append(f"{lat['orders']['never_offered']} window orders never got an offer")
    published = lat["order_to_first_offer"]["published"]
    beyond_p99 = published["beyond_window_p99_ms"]
    errors = client["errors"]
    return {
        "options": run.options,
        "setup_s": run.setup_s,
        "window": {"measure_from": run.window.measure_from, "measure_to": run.window.measure_to,
                   "drain_s": run.drain_s},
        **lat,
        "offers_in_window": _outcomes(run),
        "batches": _batches(run),
        "service": _service(run),
        "client": client,
        "cpu_cores": run.cpu,
        "target": {
            "what": "order→first offer published, beyond the batch window, p99",
            "limit_ms": TARGET_BEYOND_P99_MS,
            "measured_ms": beyond_p99,
            "met": bool(beyond_p99 <= TARGET_BEYOND_P99_MS),
            "batch_clock_measured_ms": lat["order_to_first_offer"]["batch_clock"][
                "beyond_window_p99_ms"
            ],
        },
        "errors": {"total": sum(errors.values()), "by_kind": errors},
        "checks": {"failed": failed},
        "events_read": run.reader.records,
        "timeline": _timeline(run),
    }


def _ms(d: Mapping[str, Any], *keys: str) -> str:
    return " / ".join(fmt(d[k], "", 0) for k in keys) + " ms"


def _s_ms(h: Mapping[str, float]) -> str:
    return f"{fmt(h['p50'] * 1e3, '', 1)} / {fmt(h['p99'] * 1e3, '', 1)} ms"


def _late(late: dict[str, Any]) -> str:
    if not late["n"]:
        return "none"
    missed = sorted(late["by_batches_missed"].items())
    shown = ", ".join(f"{k}: {v}" for k, v in missed[:4])
    if len(missed) > 4:
        shown += f", {missed[4][0]}+: {sum(v for _, v in missed[4:])}"
    part = ", ".join(f"{k}: {v}" for k, v in late["by_part"].items())
    return f"{late['n']:,} · by batches missed {shown} · by part {part}"


def render(doc: dict[str, Any]) -> str:
    o, opts = doc["orders"], doc["options"]
    lat, svc, cl, cpu = doc["order_to_first_offer"], doc["service"], doc["client"], doc["cpu_cores"]
    off, b = doc["offers_in_window"], doc["batches"]
    c = cl["latency"]
    pub = lat["published"]
    rows = [
        ("orders placed in the window · per s",
         f"{o['placed_in_window']:,} · {o['placed_per_s']:.1f} (offered {opts['orders_per_s']:g})"),
        ("  offered · never offered · assigned · expired",
         f"{o['offered']:,} · {o['never_offered']} · {o['assigned']:,} · {o['expired']}"),
        ("order→first offer published: p50 / p99 / max", _ms(pub, "p50_ms", "p99_ms", "max_ms")),
        ("  beyond the batch window: p50 / p99",
         _ms(pub, "beyond_window_p50_ms", "beyond_window_p99_ms")),
        ("order→first offer, batch clock: p50 / p99 / max",
         _ms(lat["batch_clock"], "p50_ms", "p99_ms", "max_ms")),
        ("  beyond the batch window: p50 / p99",
         _ms(lat["batch_clock"], "beyond_window_p50_ms", "beyond_window_p99_ms")),
        ("customer's request sent→offer published: p50 / p99",
         _ms(lat["published_from_request_sent"], "p50_ms", "p99_ms")),
        (f"order→offer on the feed ({lat['on_feed']['n']:,} orders): p50 / p99",
         _ms(lat["on_feed"], "p50_ms", "p99_ms")),
        (f"order→offer via the topic ({lat['via_topic']['n']:,}): p50 / p99",
         _ms(lat["via_topic"], "p50_ms", "p99_ms")),
        ("order→assignment: p50 / p99", _ms(doc["order_to_assignment"], "p50_ms", "p99_ms")),
        ("batch part written→offer published: p50 / p99",
         _ms(doc["batch_start_to_published"], "p50_ms", "p99_ms")),
        ("  of each batch's first part (oldest orders): p50 / p99",
         _ms(doc["first_part_to_published"], "p50_ms", "p99_ms")),
        (f"late orders (first offer > {LATE_S * 1e3:.0f} ms beyond the window)",
         _late(doc["late_orders"])),
        ("offer published→on the feed (topic fan-out): p50 / p99",
         _ms(doc["published_to_feed"], "p50_ms", "p99_ms")),
        ("batches with offers · interval p50 / p99 / max",
         f"{b['with_offers']} · " + _ms(b["interval"], "p50_ms", "p99_ms", "max_ms")),
        ("batch orders p50 / p99 (histogram)",
         f"{fmt(svc['batch_orders']['p50'], '', 0)} / {fmt(svc['batch_orders']['p99'], '', 0)}"),
        ("batch solve p50 / p99 (histogram)", _s_ms(svc["solve_s"])),
        ("batch apply p50 / p99 (histogram)", _s_ms(svc["apply_s"])),
        ("service order→offer histogram p50 / p99", _s_ms(svc["order_to_offer_s"])),
        ("offers made / accepted / declined / expired",
         f"{off['made']:,} / {off['accepted']:,} / {off['declined']:,} / {off['expired']:,}"),
        ("orders expired (no driver in time)", f"{svc['orders_expired']:.0f}"),
        ("available workers min–max · open orders max",
         f"{svc['available_workers_min']:,.0f}–{svc['available_workers_max']:,.0f} · "
         f"{svc['open_orders_max']:,.0f}"),
        ("orders sent > 50 ms after due (load process busy)", f"{cl['late_order_starts']:,}"),
        ("POST /v1/orders p50 / p99", _ms(c.get("place_order", {"p50_ms": math.nan,
                                                               "p99_ms": math.nan}),
                                          "p50_ms", "p99_ms")),
        ("  of it inside the API's app (service histogram): p50 / p99",
         _s_ms(svc["in_app_s"]["place_order"])),
        ("accept inside the API's app (service histogram): p50 / p99",
         _s_ms(svc["in_app_s"]["accept"])),
        ("accept · trip step p99",
         " · ".join(fmt(c[r]["p99_ms"], " ms", 0) if r in c else "n/a"
                    for r in ("accept", "trip_step"))),
        ("load processes: wait for a free connection p99",
         fmt(cl["connection_wait"]["p99_ms"], " ms", 0)),
        ("/metrics answer p50 / max (event-loop lag)",
         _ms(svc["metrics_scrape"], "p50_ms", "max_ms")),
        ("errors", ", ".join(f"{k}: {v}" for k, v in doc["errors"]["by_kind"].items()) or "none"),
        ("checks", "; ".join(doc["checks"]["failed"]) or "all passed"),
        ("CPU cores: API / matcher / loadgen / broker / postgres",
         " / ".join(fmt(cpu.get(k, math.nan), "", 2)
                    for k in ("service", "matcher", "loadgen", "broker", "postgres"))),
        ("CPU cores: harness / whole box / anything else",
         " / ".join(fmt(cpu.get(k, math.nan), "", 2) for k in ("harness", "box", "other"))),
        ("CPU ms per order placed: API / matcher / loadgen / broker / postgres",
         " / ".join(fmt(1000 * cpu.get(k, math.nan) / o["placed_per_s"], "", 1)
                    if o["placed_per_s"] else "n/a"
                    for k in ("service", "matcher", "loadgen", "broker", "postgres"))),
        *([host_row(doc["host_loop_s"])] if "host_loop_s" in doc else []),
        (f"target: beyond-window p99 ≤ {TARGET_BEYOND_P99_MS:.0f} ms",
         ("PASS" if doc["target"]["met"] else "FAIL")
         + f" ({fmt(pub['beyond_window_p99_ms'], ' ms', 0)})"),
    ]
    title = (f"Dispatch latency: {opts['orders_per_s']:g} orders/s offered, {opts['drivers']:,} "
             f"drivers online ({opts['feed_drivers']:,} on the feed), batch window "
             f"{opts['window']:g} s, {opts['seconds']:g} s measured")
    return table(title, rows)
