"""`polder up` as a user runs it: a fresh data directory, real processes, Ctrl-C at the end."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from polder.runtime.infra import free_port, port_is_free

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


class Up:
    def __init__(self, data_dir: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("POLDER_")}
        self.env.update(
            POLDER_DATA_DIR=str(data_dir),
            POLDER_BROKER_PORT=str(free_port()),
            POLDER_LOCATION_PORT=str(free_port()),
            POLDER_DISPATCH_PORT=str(free_port()),
            POLDER_BILLING_PORT=str(free_port()),
            POLDER_KAFKA_SESSION_TIMEOUT_MS="2000",
            POLDER_KAFKA_HEARTBEAT_MS="400",
        )
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    @property
    def location(self) -> str:
        return f"http://127.0.0.1:{self.env['POLDER_LOCATION_PORT']}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polder", "up"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            self.lines.append(line)
            if line.startswith("Tokens:"):  # the last line of the banner
                return
        raise AssertionError("polder up did not come up:\n" + "".join(self.lines[-60:]))

    def database_url(self) -> str:
        for line in self.lines:
            m = re.match(r"\s+database\s+(\S+)", line)
            if m:
                return m.group(1)
        raise AssertionError("no database line printed")

    def token(self, role: str, sub: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "polder", "token", "--role", role, "--sub", sub],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        self.lines.append(out)
        return self.proc.returncode


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    u = Up(tmp_path / "polder-data")
    yield u
    if u.proc is not None and u.proc.poll() is None:
        u.proc.kill()


def test_polder_up_runs_the_system_and_stops_everything_it_started(up: Up) -> None:
    up.start()
    driver = {"authorization": f"Bearer {up.token('driver', 'e2e-driver')}"}
    operator = {"authorization": f"Bearer {up.token('operator', 'e2e-ops')}"}
    now = datetime.now(UTC)
    pings = [
        {"lat": 52.3731, "lng": 4.8922, "recorded_at": (now - timedelta(seconds=s)).isoformat()}
        for s in (4, 2)
    ]
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{up.location}/readyz").status_code == 200
        r = client.post(
            f"{up.location}/v1/drivers/e2e-driver/locations", json={"pings": pings}, headers=driver
        )
        assert r.status_code == 202 and r.json()["accepted"] == 2
        deadline = time.monotonic() + 15
        drivers: list[dict[str, object]] = []
        while time.monotonic() < deadline and not drivers:
            found = client.get(
                f"{up.location}/v1/drivers/nearby",
                params={"lat": 52.373, "lng": 4.892, "radius_m": 500},
                headers=operator,
            )
            drivers = found.json()["drivers"]
            time.sleep(0.1)
        assert [d["driver_id"] for d in drivers] == ["e2e-driver"]

    async def traces() -> int:
        conn = await asyncpg.connect(up.database_url())
        try:
            return int(await conn.fetchval("SELECT count(*) FROM location.pings"))
        finally:
            await conn.close()

    deadline = time.monotonic() + 30
    while asyncio.run(traces()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert asyncio.run(traces()) == 2

    assert up.stop() == 0
    output = "".join(up.lines)
    assert "Stopped." in output
    assert port_is_free("127.0.0.1", int(up.env["POLDER_BROKER_PORT"]))
    for service in ("LOCATION", "DISPATCH", "BILLING"):
        assert port_is_free("127.0.0.1", int(up.env[f"POLDER_{service}_PORT"]))
    for name in ("location", "dispatch", "billing"):
        assert f"  {name}" in output  # every service was started and announced
    assert not (Path(up.env["POLDER_DATA_DIR"]) / "pgdata" / "postmaster.pid").exists()

    # The data directory persists: a second run finds the first run's traces.
    up.start()
    assert asyncio.run(traces()) == 2
    assert up.stop() == 0
