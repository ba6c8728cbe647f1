"""Prometheus metrics: one registry per service app, so tests can build several in a process."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CommonMetrics:
    """Metrics every service has: HTTP traffic, consumed events, dead letters, consumer lag."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.http_requests = Counter(
            "polder_http_requests_total",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_latency = Histogram(
            "polder_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.events_consumed = Counter(
            "polder_events_consumed_total",
            "Events handled by a consumer",
            ["consumer", "topic"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "polder_dead_letters_total",
            "Records sent to the dead-letter topic, by consumer and reason kind",
            ["consumer", "kind"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "polder_consumer_lag_records",
            "Records between a consumer's position and the partition's high watermark",
            ["consumer", "topic", "partition"],
            registry=registry,
        )
        self.loop_lag = Histogram(
            "polder_event_loop_lag_seconds",
            "How late a timer fires on the service's event loop (sampled every 100 ms): how "
            "long other work held the loop, which every request and consumer step waits on top",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.rate_limited = Counter(
            "polder_rate_limited_total",
            "Requests (or WebSocket frames) refused with 429: a token's budget was spent",
            ["budget"],
            registry=registry,
        )
        self.handler_failures = Counter(
            "polder_consumer_handler_failures_total",
            "Batches whose handler raised; the batch is retried after a back-off",
            ["consumer"],
            registry=registry,
        )


class PoolCollector(Collector):
    """The connections of a service's Postgres pools, read at scrape time (asyncpg pools keep
    the counts): in use, idle, and the most each may open. A pool whose ``in_use`` stays at its
    maximum makes requests wait for a connection: raise ``POLDER_DB_POOL_SIZE`` or add
    replicas (and mind Postgres' ``max_connections``)."""

    def __init__(self, pools: Callable[[], Mapping[str, Any]]) -> None:
        self.pools = pools  # name -> asyncpg pool

    def collect(self) -> Iterable[GaugeMetricFamily]:
        connections = GaugeMetricFamily(
            "polder_db_pool_connections",
            "Connections of the service's Postgres pools, by pool and state (in_use, idle)",
            labels=["pool", "state"],
        )
        limit = GaugeMetricFamily(
            "polder_db_pool_max_connections",
            "The most connections each of the service's Postgres pools may open",
            labels=["pool"],
        )
        for name, pool in self.pools().items():
            size, idle = pool.get_size(), pool.get_idle_size()
            connections.add_metric([name, "in_use"], size - idle)
            connections.add_metric([name, "idle"], idle)
            limit.add_metric([name], pool.get_max_size())
        return [connections, limit]


class HttpMetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: CommonMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.http_requests.labels(template, scope["method"], str(status)).inc()
            self.metrics.http_latency.labels(template).observe(time.perf_counter() - started)
