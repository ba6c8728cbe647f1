"""The files in deploy/ that are derived, written from one place:

* the Grafana dashboards (deploy/grafana/dashboards/*.json), defined below as code;
* the Prometheus Operator rule (deploy/kubernetes/monitoring/rules.yaml), a copy of
  deploy/prometheus/rules.yml;
* the Strimzi topics (deploy/kubernetes/kafka/topics.yaml), from services/common/topics.py.

Run `.venv/bin/python deploy/generate.py` after editing either. The test suite fails when a
file differs from what this writes, or when a query names a metric no service exports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from polder.common.topics import TOPICS

DEPLOY = Path(__file__).resolve().parent
RULES = DEPLOY / "prometheus" / "rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or "stat", "bargauge"
    description: str = ""
    width: int = 12
    stack: bool = False


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def q(expr: str, legend: str = "") -> tuple[str, str]:
    return (expr, legend)


def p99(metric: str, by: str = "") -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile(0.99, sum by ({group}) (rate({metric}_bucket[$__rate_interval])))"


def p50(metric: str) -> str:
    return f"histogram_quantile(0.5, sum by (le) (rate({metric}_bucket[$__rate_interval])))"


OPERATIONS = Dashboard(
    uid="polder-operations",
    title="Polder / Operations",
    description="Is the system keeping up? Ingest, dispatch latency, matching, consumers, DLQ.",
    panels=(
        Panel(
            "Pings accepted and rejected per second",
            (
                q("sum(rate(polder_location_pings_accepted_total[$__rate_interval]))", "accepted"),
                q(
                    "sum by (reason)"
                    " (rate(polder_location_pings_rejected_total[$__rate_interval]))",
                    "rejected: {{reason}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "Ping → index latency",
            (
                q(p50("polder_location_ping_to_index_seconds"), "p50"),
                q(p99("polder_location_ping_to_index_seconds"), "p99"),
            ),
            unit="s",
            description="Server receipt of a batch to its position in the index. "
            "Target p99 ≤ 250 ms.",
        ),
        Panel(
            "Order → offer and order → assignment",
            (
                q(p50("polder_dispatch_order_to_offer_seconds"), "offer p50"),
                q(p99("polder_dispatch_order_to_offer_seconds"), "offer p99"),
                q(p99("polder_dispatch_order_to_assignment_seconds"), "assignment p99"),
            ),
            unit="s",
            description="Target: offer p99 at most 100 ms beyond the batch window.",
        ),
        Panel(
            "Match rate",
            (
                q(
                    "sum(rate(polder_dispatch_order_to_assignment_seconds_count[$__rate_interval]))"
                    " / sum(rate(polder_dispatch_orders_placed_total[$__rate_interval]))",
                    "orders assigned / placed",
                ),
                q(
                    'sum(rate(polder_dispatch_offers_total{outcome="accepted"}[$__rate_interval]))'
                    ' / sum(rate(polder_dispatch_offers_total{outcome="made"}[$__rate_interval]))',
                    "offers accepted / made",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Offers by outcome per second",
            (
                q(
                    "sum by (outcome) (rate(polder_dispatch_offers_total[$__rate_interval]))",
                    "{{outcome}}",
                ),
            ),
            unit="reqps",
            stack=True,
        ),
        Panel(
            "Orders expired without a driver per second",
            (q("sum(rate(polder_dispatch_orders_expired_total[$__rate_interval]))", "expired"),),
            unit="reqps",
        ),
        Panel(
            "Matching batches",
            (
                q(p99("polder_dispatch_batch_solve_seconds"), "solve p99"),
                q(p99("polder_dispatch_batch_apply_seconds"), "apply p99"),
            ),
            unit="s",
        ),
        Panel(
            "Consumer lag (records)",
            (q("sum by (consumer) (polder_consumer_lag_records)", "{{consumer}}"),),
        ),
        Panel(
            "Dead letters per minute",
            (
                q(
                    "sum by (consumer, kind) (increase(polder_dead_letters_total[1m]))",
                    "{{consumer}}: {{kind}}",
                ),
            ),
            description="Records sent to polder.dlq with their reason. Anything here needs a look.",
        ),
        Panel(
            "HTTP requests per second by status",
            (
                q(
                    "sum by (job, status) (rate(polder_http_requests_total[$__rate_interval]))",
                    "{{job}} {{status}}",
                ),
            ),
            unit="reqps",
        ),
        Panel(
            "HTTP p99 by route",
            (q(p99("polder_http_request_duration_seconds", "route"), "{{route}}"),),
            unit="s",
        ),
        Panel(
            "Consumer handler failures per minute",
            (
                q(
                    "sum by (consumer) (increase(polder_consumer_handler_failures_total[1m]))",
                    "{{consumer}}",
                ),
            ),
        ),
        Panel(
            "Postgres connections in use, of the pools' maximum",
            (
                q(
                    'sum by (job, pool) (polder_db_pool_connections{state="in_use"})',
                    "{{job}} {{pool}} in use",
                ),
                q("sum by (job, pool) (polder_db_pool_max_connections)", "{{job}} {{pool}} max"),
            ),
            description="In use at the maximum for long: requests wait for a connection "
            "(POLDER_DB_POOL_SIZE, or more replicas).",
        ),
        Panel(
            "Dispatch steps tried without a transaction, by outcome",
            (
                q(
                    "sum by (outcome) (rate(polder_dispatch_optimistic_steps_total"
                    "[$__rate_interval]))",
                    "{{outcome}}",
                ),
            ),
            description="applied: one guarded statement did it. changed: a row it read changed "
            "first (a race), so it ran again in a transaction. needs_lock: it needed a "
            "transaction. A rising share of changed means contention on the same orders or "
            "workers.",
        ),
    ),
)

MARKETPLACE = Dashboard(
    uid="polder-marketplace",
    title="Polder / Marketplace",
    description="Supply and demand per H3 res-7 cell, surge and pickup times.",
    panels=(
        Panel(
            "Available workers and open orders",
            (
                q("sum(polder_dispatch_available_workers)", "available workers"),
                q("sum(polder_dispatch_open_orders)", "open orders"),
                q("sum(polder_location_indexed_drivers)", "drivers with a fresh position"),
            ),
        ),
        Panel(
            "Orders placed per minute",
            (q("sum(rate(polder_dispatch_orders_placed_total[$__rate_interval])) * 60", "orders"),),
        ),
        Panel(
            "Demand per cell (orders in the surge window), top 15",
            (q("topk(15, sum by (cell) (polder_dispatch_cell_demand_orders))", "{{cell}}"),),
            kind="bargauge",
        ),
        Panel(
            "Supply per cell (available workers), top 15",
            (q("topk(15, sum by (cell) (polder_dispatch_cell_supply_workers))", "{{cell}}"),),
            kind="bargauge",
        ),
        Panel(
            "Surge multiplier per cell, highest 15",
            (q("topk(15, max by (cell) (polder_dispatch_cell_surge_multiplier))", "{{cell}}"),),
            kind="bargauge",
        ),
        Panel(
            "Pickup ETA of offers",
            (
                q(p50("polder_dispatch_pickup_eta_seconds"), "p50"),
                q(p99("polder_dispatch_pickup_eta_seconds"), "p99"),
            ),
            unit="s",
        ),
    ),
)

WORKERS = Dashboard(
    uid="polder-workers",
    title="Polder / Workers",
    description=(
        "Where the workers' time goes and what it pays, over the last hour of the whole fleet "
        "(billing recomputes these every minute from the timelines)."
    ),
    panels=(
        Panel(
            "Online time by phase (P1 waiting for a job, P2 to pickup, P3 on trip)",
            (
                q(
                    # max, not sum: one replica computes the fleet's figures (the others
                    # export none), and a sum would count a hand-over twice
                    "max by (phase) (polder_billing_fleet_phase_seconds)"
                    " / ignoring(phase) group_left"
                    " sum(max by (phase) (polder_billing_fleet_phase_seconds))",
                    "{{phase}}",
                ),
            ),
            unit="percentunit",
            stack=True,
        ),
        Panel(
            "Waiting hours, paid and unpaid (default policy)",
            (q("max by (paid) (polder_billing_fleet_waiting_seconds) / 3600", "paid={{paid}}"),),
            unit="h",
            stack=True,
        ),
        Panel(
            "Unpaid waiting share of online time",
            (q("max(polder_billing_unpaid_waiting_ratio)", "unpaid waiting"),),
            unit="percentunit",
            kind="stat",
        ),
        Panel(
            "Earnings per online hour by policy (minor units)",
            (
                q(
                    "max by (policy, currency)"
                    " (polder_billing_fleet_earnings_per_online_hour_minor)",
                    "{{policy}} ({{currency}})",
                ),
            ),
        ),
        Panel(
            "Workers below each policy's floor",
            (
                q(
                    "max by (policy) (polder_billing_fleet_below_floor_ratio)",
                    "{{policy}}",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Top-ups posted per hour (minor units)",
            (
                q(
                    "sum by (policy, currency) (increase(polder_billing_topup_minor_total[1h]))",
                    "{{policy}} ({{currency}})",
                ),
            ),
        ),
    ),
)

DASHBOARDS = (OPERATIONS, MARKETPLACE, WORKERS)


def panel_json(panel: Panel, pid: int, x: int, y: int) -> dict[str, object]:
    custom: dict[str, object] = {}
    if panel.kind == "timeseries":
        custom = {"stacking": {"mode": "normal" if panel.stack else "none"}, "fillOpacity": 10}
    return {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(panel.queries)
        ],
    }


def dashboard_json(d: Dashboard) -> dict[str, object]:
    panels, x, y = [], 0, 0
    for pid, panel in enumerate(d.panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        panels.append(panel_json(panel, pid, x, y))
        x += panel.width
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": ["polder"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": panels,
    }


def prometheus_rule() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "polder",
            "namespace": "polder",
            "labels": {"app.kubernetes.io/part-of": "polder"},
        },
        "spec": {"groups": groups},
    }
    header = "# Generated from deploy/prometheus/rules.yml by deploy/generate.py: edit those.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=200)


def strimzi_topics() -> str:
    docs = []
    for t in TOPICS:
        doc = {
            "apiVersion": "kafka.strimzi.io/v1beta2",
            "kind": "KafkaTopic",
            "metadata": {
                "name": t.name.replace(".", "-"),
                "namespace": "kafka",
                "labels": {"strimzi.io/cluster": "polder"},
            },
            "spec": {
                "topicName": t.name,
                "partitions": t.partitions,
                "replicas": 3,
                "config": {"retention.ms": t.retention_ms, "min.insync.replicas": 2},
            },
        }
        docs.append(f"# {t.name}, keyed by {t.key}: {t.why_retention}.\n" + yaml.safe_dump(doc))
    header = "# Generated from services/common/topics.py by deploy/generate.py: edit that.\n"
    return header + "---\n".join(docs)


def render() -> dict[Path, str]:
    """Every derived file: its path and the text it must hold."""
    files = {
        DEPLOY / "grafana" / "dashboards" / f"{d.uid.removeprefix('polder-')}.json": (
            json.dumps(dashboard_json(d), indent=2, ensure_ascii=False) + "\n"
        )
        for d in DASHBOARDS
    }
    files[DEPLOY / "kubernetes" / "monitoring" / "rules.yaml"] = prometheus_rule()
    files[DEPLOY / "kubernetes" / "kafka" / "topics.yaml"] = strimzi_topics()
    return files


if __name__ == "__main__":
    for path, text in render().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(DEPLOY.parent)}")
