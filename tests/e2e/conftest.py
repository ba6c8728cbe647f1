"""`polder up` as a user runs it, for the end-to-end tests: free ports, a fresh data directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from polder.runtime.infra import free_port

REPO = Path(__file__).resolve().parents[2]


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
        self._reader: threading.Thread | None = None
        self.group = False

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def polder(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run another `polder` command against this system."""
        return subprocess.run(
            [sys.executable, "-m", "polder", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @property
    def location(self) -> str:
        return f"http://127.0.0.1:{self.env['POLDER_LOCATION_PORT']}"

    @property
    def dispatch(self) -> str:
        return f"http://127.0.0.1:{self.env['POLDER_DISPATCH_PORT']}"

    def start(self, *args: str, command: list[str] | None = None) -> None:
        """`polder up` with ``args``, or ``command`` (e.g. `make demo`) in its own process
        group, which `stop` then interrupts as a terminal's Ctrl-C does."""
        self.group = command is not None
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "polder", "up", *args],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=self.group,
        )
        deadline = time.monotonic() + 120
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            self.lines.append(line)
            if line.startswith("Tokens:"):  # the last line of the banner
                # keep reading, so that a full pipe never blocks the system
                self._reader = threading.Thread(target=self._read, daemon=True)
                self._reader.start()
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
        if self.group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=90)
        if self._reader is not None:
            self._reader.join(timeout=10)
            self._reader = None
        self.close()
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    u = Up(tmp_path / "polder-data")
    yield u
    if u.proc is not None and u.proc.poll() is None:
        if u.group:
            os.killpg(u.proc.pid, signal.SIGKILL)
        u.proc.kill()
        u.proc.wait()
    if u._reader is not None:
        u._reader.join(timeout=10)
    u.close()
