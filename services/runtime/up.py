"""`polder up`: start Postgres, the broker, topics, migrations and every service; stop them all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
import structlog

from polder.common.bus import create_topics
from polder.common.db import create_pool, migrate
from polder.common.settings import Settings
from polder.common.tasks import wait_for_event
from polder.runtime.catalog import available_services, service_module
from polder.runtime.infra import (
    EmbeddedBroker,
    EmbeddedPostgres,
    die_with_parent,
    ensure_database,
    wait_for_broker,
)
from polder.simulator.demo import Demo, run_demo

log = structlog.get_logger("polder.up")


@dataclass
class System:
    """Everything `polder up` started, so it can all be stopped in reverse order."""

    settings: Settings
    postgres: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def stop(self) -> None:
        for proc in reversed(self.processes.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in self.processes.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service did not stop in time; killing it", service=name)
                proc.kill()
                proc.wait()
        self.processes.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None


async def start_infrastructure(system: System) -> Settings:
    """Postgres and broker from settings, or embedded ones; then topics and migrations."""
    s = system.settings
    data_dir = s.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url = s.database_url
    if not database_url:
        system.postgres = EmbeddedPostgres(data_dir / "pgdata")
        admin_url = await asyncio.to_thread(system.postgres.start)
        database_url = await ensure_database(admin_url)
        log.info("embedded postgres running", pgdata=str(system.postgres.pgdata))
    bootstrap = s.kafka_bootstrap
    if not bootstrap:
        system.broker = EmbeddedBroker(
            port=s.broker_port, host=s.host, log_path=data_dir / "broker.log"
        )
        # Started from the main thread on purpose: PR_SET_PDEATHSIG fires when the *thread*
        # that forked the child exits, and a worker thread of asyncio's pool may.
        bootstrap = system.broker.start()
        log.info("embedded broker running", bootstrap=bootstrap)
    await wait_for_broker(bootstrap)
    settings = s.model_copy(update={"database_url": database_url, "kafka_bootstrap": bootstrap})
    await create_topics(settings, embedded=system.broker is not None)
    for name in available_services():
        module = service_module(name)
        schema = settings.db_schema(module.SERVICE)
        pool = await create_pool(database_url, schema, max_size=1)
        try:
            await migrate(pool, schema, module.MIGRATIONS)
        finally:
            await pool.close()
    return settings


def child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["POLDER_DATABASE_URL"] = settings.database_url
    env["POLDER_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_services(system: System, settings: Settings) -> dict[str, str]:
    urls = {}
    env = child_env(settings)
    for name in available_services():
        system.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "polder", "serve", name],
            env=env,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        urls[name] = f"http://{settings.host}:{settings.port_of(name)}"
    return urls


async def wait_until_ready(system: System, urls: dict[str, str], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(urls)
    async with httpx.AsyncClient(timeout=2.0) as client:
        while pending:
            for name, url in list(pending.items()):
                proc = system.processes[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode} while starting")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/readyz")).status_code == 200:
                        del pending[name]
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout_s:.0f} s: {', '.join(pending)}")
            await asyncio.sleep(0.2)


async def up(settings: Settings, demo: Demo | None = None) -> int:
    """Start everything; with ``demo``, also a simulation that runs in rounds until Ctrl-C."""
    system = System(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        # A terminal's Ctrl-C reaches the services, Postgres and the broker too: they are
        # stopping, so a running simulation round is abandoned without its report.
        stop.set()
        if simulation is not None:
            simulation.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    simulation: asyncio.Task[None] | None = None
    try:
        started = time.monotonic()
        full = await start_infrastructure(system)
        urls = start_services(system, full)
        await wait_until_ready(system, urls)
        print(f"\nPolder is up ({time.monotonic() - started:.1f} s).", flush=True)
        for name, url in urls.items():
            print(f"  {name:<9} {url}   ({url}/docs, {url}/metrics)", flush=True)
        print(f"  broker    {full.kafka_bootstrap}", flush=True)
        print(f"  database  {full.database_url}", flush=True)
        if demo is not None:
            print(
                f"  metrics   {urls['dispatch']}/metrics (and each service's /metrics)\n"
                f"  reports   {full.data_dir.resolve() / 'reports' / 'latest' / 'report.md'}"
                f" (a round every {demo.minutes:g} min)",
                flush=True,
            )
            simulation = asyncio.create_task(run_demo(full, demo, stop))
        print(
            "Tokens: polder token --role driver --sub d1   ·   Ctrl-C stops everything.\n",
            flush=True,
        )
        while not stop.is_set():
            await wait_for_event(stop, 1.0)
            for name, proc in system.processes.items():
                if proc.poll() is not None and not stop.is_set():
                    log.error(
                        "service exited; stopping everything", service=name, code=proc.returncode
                    )
                    return 1
            if simulation is not None and simulation.done():
                break
        failed = simulation is not None and simulation.done() and not simulation.cancelled()
        if failed and simulation is not None and simulation.exception() is not None:
            log.error(
                "the demo simulation failed; stopping everything",
                error=repr(simulation.exception()),
            )
            return 1
        return 0
    finally:
        if simulation is not None and not simulation.done():
            simulation.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await simulation
        print("Stopping…", flush=True)
        await asyncio.to_thread(system.stop)
        print("Stopped.", flush=True)
