"""A self-contained location service on real infrastructure, as `polder up` starts it.

Embedded Postgres and the embedded Tansu broker live in a temporary directory on free loopback
ports; topics are created as `polder up` creates them; the service runs as its own process
(`python -m polder serve location`) and applies its own migrations. Only the location service
is imported or started. Everything is stopped, and the directory removed, when the context
exits: normally, on error or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from polder.common.bus import create_topics
from polder.common.settings import Settings
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


def _service_env(settings: Settings, rate_per_s: float, burst: int) -> dict[str, str]:
    env: dict[str, str] = dict(child_env(settings))
    env["POLDER_RATE_LIMIT_PER_S"] = str(rate_per_s)
    env["POLDER_RATE_LIMIT_BURST"] = str(burst)
    env["POLDER_LOG_LEVEL"] = "WARNING"
    return env


async def _start_infrastructure(system: System) -> Settings:
    """Postgres with the polder database, the broker and the topics; returns full settings."""
    data_dir = system.settings.data_dir
    system.postgres = EmbeddedPostgres(data_dir / "pgdata")
    database_url = await ensure_database(await asyncio.to_thread(system.postgres.start))
    system.broker = EmbeddedBroker(
        port=system.settings.broker_port, host=HOST, log_path=data_dir / "broker.log"
    )
    bootstrap = await asyncio.to_thread(system.broker.start)
    await wait_for_broker(bootstrap)
    settings = system.settings.model_copy(
        update={"database_url": database_url, "kafka_bootstrap": bootstrap}
    )
    await create_topics(settings)
    return settings


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"location service exited with code {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{base_url}/readyz").status_code == 200:
                    return
            time.sleep(0.2)
    raise TimeoutError(f"location service not ready within {timeout_s:.0f} s")


def _log_tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def location_service(
    rate_per_s: float = 1_000.0, burst: int = 1_000, ready_timeout_s: float = 90.0
) -> Iterator[RunningService]:
    """Start Postgres, the broker, topics, migrations and the location service; stop them all."""
    tmp = Path(tempfile.mkdtemp(prefix="polder-bench-"))
    ports = {"broker_port": free_port(HOST), "location_port": free_port(HOST)}
    system = System(Settings(data_dir=tmp, host=HOST, **ports))
    log_path = tmp / "location.log"
    try:
        settings = asyncio.run(_start_infrastructure(system))
        port = settings.location_port
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "polder", "serve", "location", "--port", str(port)],
                env=_service_env(settings, rate_per_s, burst),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
            )
        system.processes["location"] = proc
        base_url = f"http://{HOST}:{port}"
        try:
            _wait_ready(proc, base_url, ready_timeout_s)
        except (RuntimeError, TimeoutError):
            print(f"--- location service log ---\n{_log_tail(log_path)}", file=sys.stderr)
            raise
        yield RunningService(settings, base_url, proc.pid, log_path, tmp)
        if proc.poll() is not None:
            print(f"location service exited early with code {proc.returncode}; its log:\n"
                  f"{_log_tail(log_path)}", file=sys.stderr)
    finally:
        system.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def describe_machine() -> str:
    cores = os.cpu_count() or 0
    return (
        f"{cores} cores. The location service is one Python process (one core at most); "
        "the load generators, the Tansu broker and Postgres share the rest of the box."
    )
