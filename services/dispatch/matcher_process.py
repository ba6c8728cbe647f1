"""The matcher in its own process, so batches never wait behind the API's requests.

The API process starts it (``MatcherProcess``) and restarts it if it dies; it dies with the API
process. It has its own pool, producer, position index and outbox relay (the only relay while it
runs: it publishes the API's events too). Its view of the available workers is loaded from
Postgres at start and then follows ``polder.driver.events`` (see ``domain/availability``).
Postgres stays the truth: a batch locks its orders ``searching`` and its workers ``idle``, so a
second matcher (another API replica's) could only find its choices taken, never double-book;
an advisory lock keeps all but one of them idle anyway.

Its metrics reach the API's ``/metrics``: it writes its registry's text exposition to a file
every ``METRICS_INTERVAL_S``, and the API merges that into its own (``MergedRegistry``).

    python -m polder.dispatch.matcher_process   (settings from POLDER_* as for any service)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import orjson
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from polder.common.bus import Received
from polder.common.db import Pool
from polder.common.geoindex import LocationIndex
from polder.common.logging import configure_logging
from polder.common.outbox import OutboxRelay
from polder.common.positions import apply_pings
from polder.common.service import service_resources
from polder.common.settings import Settings
from polder.common.tasks import wait_for_start
from polder.common.topics import DRIVER_EVENTS, DRIVER_LOCATIONS
from polder.dispatch.domain.availability import Availability
from polder.dispatch.domain.matching import GreatCircleEta
from polder.dispatch.domain.surge import SurgeModel
from polder.dispatch.handlers import Handlers
from polder.dispatch.matcher import Matcher
from polder.dispatch.metrics import DispatchMetrics

log = structlog.get_logger(__name__)

SERVICE = "dispatch"
MIGRATIONS = "polder.dispatch.migrations"
SHARE_DIR_ENV = "POLDER_MATCHER_SHARE_DIR"
METRICS_INTERVAL_S = 0.5
# The relay here publishes every process's outbox rows: the API's are found by polling.
RELAY_POLL_S = 0.02
RELAY_BATCH = 2000
METRICS_FILE = "metrics.prom"
SUPPLY_FILE = "supply.json"


def build_matcher(
    settings: Settings,
    handlers: Handlers,
    metrics: DispatchMetrics,
    availability: Availability,
    surge: SurgeModel,
) -> Matcher:
    return Matcher(
        handlers=handlers,
        positions=LocationIndex(settings.index_resolution, settings.location_ttl_s),
        eta=GreatCircleEta(road_factor=settings.road_factor, speed_mps=settings.city_speed_mps),
        settings=settings,
        metrics=metrics,
        surge=surge,
        availability=availability,
    )


async def run(settings: Settings, share: Path | None, stop: asyncio.Event) -> None:
    """``share``: a folder the API process reads this one's metrics and supply from."""
    metrics = DispatchMetrics(CollectorRegistry())
    async with service_resources(settings, SERVICE, MIGRATIONS, metrics, pool_size=6) as res:
        relay = OutboxRelay(res.pool, res.bus, batch=RELAY_BATCH, idle_poll_s=RELAY_POLL_S)
        availability = Availability()
        handlers = Handlers(res.pool, res.bus, relay, metrics, availability)
        matcher = build_matcher(settings, handlers, metrics, availability, SurgeModel())
        if share is not None:
            matcher.on_supply = functools.partial(write_supply, share / SUPPLY_FILE)

        async def track_positions(records: Sequence[Received]) -> None:
            apply_pings(matcher.positions, records)

        async def follow_workers(records: Sequence[Received]) -> None:
            for r in records:
                availability.apply_event(r.event.data, r.event.time.timestamp())

        started_ms = int(time.time() * 1000) - 1000
        positions = res.consumer(
            "dispatch-positions",
            [DRIVER_LOCATIONS],
            track_positions,
            group_id=None,
            start_at_ms=lambda: int((time.time() - settings.location_ttl_s) * 1000),
        )
        workers = res.consumer(
            "dispatch-workers",
            [DRIVER_EVENTS],
            follow_workers,
            group_id=None,
            # Every event committed after the snapshot below is published after it too; older
            # ones are ignored by their seq.
            start_at_ms=lambda: started_ms,
        )
        await wait_for_start(positions.ready, res.tasks, "matcher position consumer")
        await wait_for_start(workers.ready, res.tasks, "matcher worker-state consumer")
        loaded = await matcher.load_availability()
        log.info("matcher started", workers=loaded, available=len(availability))
        res.run(relay.run(res.stop), "dispatch-outbox")
        res.run(_lead(res.pool, settings, matcher, res.stop), "dispatch-matcher")
        if share is not None:
            res.run(
                _write_metrics(metrics.registry, share / METRICS_FILE, res.stop), "matcher-metrics"
            )
        stopped = asyncio.create_task(stop.wait())
        try:
            while not stopped.done():
                await asyncio.wait([stopped, *res.tasks], return_when=asyncio.FIRST_COMPLETED)
                failed = [t for t in res.tasks if t.done()]
                if failed:
                    raise RuntimeError(f"matcher task ended: {failed[0].get_name()}")
        finally:
            stopped.cancel()


async def _lead(pool: Pool, settings: Settings, matcher: Matcher, stop: asyncio.Event) -> None:
    """Match only while holding the schema's matcher lock (one matcher at a time)."""
    key = f"matcher:{settings.db_schema(SERVICE)}"
    async with pool.acquire() as conn:
        while not stop.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        try:
            await matcher.run(stop)
        finally:
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock_all()")


def write_supply(path: Path, supply: dict[int, int], at: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"at": at, "cells": {str(c): n for c, n in supply.items()}}))
    tmp.replace(path)


class SupplyReader:
    """The API side: feeds the matcher's supply snapshots into the API's surge model, checking
    the file (one ``stat``) whenever a quote is about to be priced."""

    def __init__(self, path: Path, surge: SurgeModel) -> None:
        self.path = path
        self.surge = surge
        self._seen: int | None = None

    def refresh(self) -> None:
        try:
            stamp = self.path.stat().st_mtime_ns
            if stamp == self._seen:
                return
            doc = orjson.loads(self.path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return  # no batch yet, or caught mid-replace: the next quote looks again
        self._seen = stamp
        self.surge.observe_supply({int(c): n for c, n in doc["cells"].items()}, doc["at"])


async def _write_metrics(registry: CollectorRegistry, path: Path, stop: asyncio.Event) -> None:
    tmp = path.with_suffix(".tmp")
    while not stop.is_set():
        tmp.write_bytes(generate_latest(registry))
        tmp.replace(path)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=METRICS_INTERVAL_S)


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Stop when the process that started this one is gone."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("parent process gone; matcher stopping")
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def _main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(os.getppid(), stop))
    share = os.environ.get(SHARE_DIR_ENV)
    try:
        await run(settings, Path(share) if share else None, stop)
    finally:
        watcher.cancel()


# --- in the API process ---------------------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these settings (POLDER_* wins over the
    inherited environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLDER_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        env[f"POLDER_{name.upper()}"] = text
    return env


class MatcherProcess:
    """Starts the matcher process and keeps one running until ``stop``."""

    def __init__(self, settings: Settings, share: Path) -> None:
        self.settings = settings
        self.share = share
        self.metrics_file = share / METRICS_FILE
        self.supply_file = share / SUPPLY_FILE
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def run(self, stop: asyncio.Event) -> None:
        env = {**settings_env(self.settings), SHARE_DIR_ENV: str(self.share)}
        while not stop.is_set():
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "polder.dispatch.matcher_process", env=env
            )
            self.starts += 1
            waiter = asyncio.create_task(self.process.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if waiter.done():
                log.error("matcher process exited; restarting", code=waiter.result())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                continue
            await self.terminate()

    async def terminate(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


class MergedRegistry(CollectorRegistry):
    """The API's own metrics plus the matcher process's (from its exposition file), summed by
    name and labels: both processes count offers, each by the outcomes it decides."""

    def __init__(self, own: CollectorRegistry, file: Path) -> None:
        super().__init__(auto_describe=False)
        self.own = own
        self.file = file

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for family in self.own.collect():
            families[family.name] = _copy(family)
        for family in self._matcher_families():
            mine = families.get(family.name)
            if mine is None:
                families[family.name] = family
                continue
            index = {
                (s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(mine.samples)
            }
            for s in family.samples:
                at = index.get((s.name, tuple(sorted(s.labels.items()))))
                if at is None:
                    mine.samples.append(s)
                elif s.name.endswith("_created"):
                    mine.samples[at] = mine.samples[at]._replace(
                        value=min(mine.samples[at].value, s.value)
                    )
                else:
                    mine.samples[at] = mine.samples[at]._replace(
                        value=mine.samples[at].value + s.value
                    )
        return list(families.values())

    def _matcher_families(self) -> list[Metric]:
        try:
            text = self.file.read_text()
        except FileNotFoundError:
            return []
        return list(text_string_to_metric_families(text))


def _copy(family: Metric) -> Metric:
    copy = Metric(family.name, family.documentation, family.type, family.unit)
    copy.samples = list(family.samples)
    return copy


def main() -> None:
    import uvloop  # comes with uvicorn[standard], as for the API process

    # As `polder serve` does for the API: freeze what start-up built, collect less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1_000)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_main())


if __name__ == "__main__":
    main()
