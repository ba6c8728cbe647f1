"""One self-contained Polder service on real infrastructure, as `polder up` starts it.

Embedded Postgres and the embedded Tansu broker live in a temporary directory on free loopback
ports; topics are created as `polder up` creates them; the named service runs as its own process
(`python -m polder serve NAME`) and applies its own migrations. Only that service is started.
Everything is stopped, and the directory removed, when the context exits: normally, on error
or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import httpx

from polder.common.bus import Bus, create_topics
from polder.common.schemas import SchemaRegistry
from polder.common.settings import Settings
from polder.common.topics import DRIVER_EVENTS
from polder.runtime.infra import (
    EmbeddedBroker,
    EmbeddedPostgres,
    ensure_database,
    free_port,
    wait_for_broker,
)
from polder.runtime.up import System, child_env

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class RunningService:
    settings: Settings
    base_url: str
    pid: int
    log_path: Path
    data_dir: Path

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"


def _service_env(
    settings: Settings, rate_per_s: float, burst: int, extra: Mapping[str, str]
) -> dict[str, str]:
    env: dict[str, str] = dict(child_env(settings))
    env["POLDER_RATE_LIMIT_PER_S"] = str(rate_per_s)
    env["POLDER_RATE_LIMIT_BURST"] = str(burst)
    env["POLDER_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


def _start_infrastructure(system: System) -> Settings:
    """Postgres with the polder database, the broker and the topics; returns full settings.

    Both are started from the calling (main) thread: the broker dies with the thread that
    started it (PR_SET_PDEATHSIG follows the thread), and a worker thread of ``asyncio.run``
    ends with it.
    """
    data_dir = system.settings.data_dir
    system.postgres = EmbeddedPostgres(data_dir / "pgdata")
    admin_url = system.postgres.start()
    system.broker = EmbeddedBroker(
        port=system.settings.broker_port, host=HOST, log_path=data_dir / "broker.log"
    )
    bootstrap = system.broker.start()

    async def prepare() -> Settings:
        database_url = await ensure_database(admin_url)
        await wait_for_broker(bootstrap)
        settings = system.settings.model_copy(
            update={"database_url": database_url, "kafka_bootstrap": bootstrap}
        )
        await create_topics(settings, embedded=True)
        return settings

    return asyncio.run(prepare())


def _wait_ready(
    name: str, proc: subprocess.Popen[bytes], base_url: str, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} service exited with code {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{base_url}/readyz").status_code == 200:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"{name} service not ready within {timeout_s:.0f} s")


def _log_tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def service(
    name: str,
    rate_per_s: float = 1_000.0,
    burst: int = 1_000,
    ready_timeout_s: float = 90.0,
    env: Mapping[str, str] | None = None,
) -> Iterator[RunningService]:
    """Start Postgres, the broker, topics, and service ``name`` (which applies its migrations)
    with ``env`` added to its environment; stop them all."""
    with _infrastructure(**{f"{name}_port": free_port(HOST)}) as (system, settings):
        tmp = settings.data_dir
        log_path = tmp / f"{name}.log"
        port = settings.port_of(name)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "polder", "serve", name, "--port", str(port)],
                env=_service_env(settings, rate_per_s, burst, env or {}),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
            )
        system.processes[name] = proc
        base_url = f"http://{HOST}:{port}"
        try:
            _wait_ready(name, proc, base_url, ready_timeout_s)
        except (RuntimeError, TimeoutError):
            print(f"--- {name} service log ---\n{_log_tail(log_path)}", file=sys.stderr)
            raise
        yield RunningService(settings, base_url, proc.pid, log_path, tmp)
        if proc.poll() is not None:
            print(f"{name} service exited early with code {proc.returncode}; its log:\n"
                  f"{_log_tail(log_path)}", file=sys.stderr)


@contextlib.contextmanager
def infrastructure() -> Iterator[Settings]:
    """Postgres and the broker with the topics, in a directory of their own, on free ports, for
    a benchmark that runs a service's app in its own process; stopped and removed after."""
    with _infrastructure() as (_, settings):
        yield settings


@contextlib.contextmanager
def _infrastructure(**ports: int) -> Iterator[tuple[System, Settings]]:
    tmp = Path(tempfile.mkdtemp(prefix="polder-bench-"))
    try:
        system = System(Settings(data_dir=tmp, host=HOST, broker_port=free_port(HOST), **ports))
        try:
            yield system, _start_infrastructure(system)
        finally:
            system.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def location_service(
    rate_per_s: float = 1_000.0, burst: int = 1_000, ready_timeout_s: float = 90.0
) -> contextlib.AbstractContextManager[RunningService]:
    """Start Postgres, the broker, topics, migrations and the location service; stop them all."""
    return service("location", rate_per_s, burst, ready_timeout_s)


def describe_machine(name: str = "location") -> str:
    cores = os.cpu_count() or 0
    return (
        f"{cores} cores. The {name} service is one Python process (one core at most); "
        "the load generators, the Tansu broker and Postgres share the rest of the box."
    )


def raise_fd_limit(wanted: int) -> None:
    """One socket per simulated driver in WS mode, on both ends: children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every context manager stops what it started."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


async def publish_online(settings: Settings, driver_ids: Sequence[str]) -> None:
    """Publish the status change dispatch publishes when a worker goes online, for each of
    ``driver_ids``: the location service takes no position from a worker who is offline."""
    bus = Bus(settings, SchemaRegistry.load(), source="polder/dispatch")
    await bus.start()
    try:
        now = datetime.now(UTC)
        seq = int(time.time() * 1000)  # above any earlier run's numbers for the same ids
        for driver_id in driver_ids:
            data: dict[str, object] = {
                "driver_id": driver_id,
                "seq": seq,
                "from": "offline",
                "to": "idle",
                "cause": "went_online",
            }
            event = bus.event("polder.driver.state_changed.v1", driver_id, data, now)
            await bus.producer.send(
                settings.topic(DRIVER_EVENTS.name),
                value=bus.registry.encode(event),
                key=driver_id.encode(),
            )
        await bus.producer.flush()
    finally:
        await bus.stop()


def drivers_on_shift(base_url: str) -> float:
    """How many workers the location service at ``base_url`` takes pings from."""
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        text = client.get(f"{base_url}/metrics").text
    for line in text.splitlines():
        if line.startswith("polder_location_drivers_on_shift "):
            return float(line.split()[1])
    return 0.0


def wait_on_shift(base_url: str, n: float, timeout_s: float = 60.0) -> None:
    """Wait until the location service at ``base_url`` takes pings from ``n`` workers."""
    deadline = time.monotonic() + timeout_s
    while drivers_on_shift(base_url) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the location service did not hear {n:.0f} workers go online")
        time.sleep(0.1)
