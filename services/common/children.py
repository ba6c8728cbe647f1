"""Helper processes a service starts beside itself (the dispatch matcher, the location trace
writer): started with the service's settings, restarted if they die, stopped with the service,
and dying on their own if the service is killed. Each writes its Prometheus registry to a file
in a private folder that the service merges into its own ``/metrics`` (``MergedRegistry``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from polder.common import gctune
from polder.common.logging import configure_logging
from polder.common.service import Resources
from polder.common.settings import Settings
from polder.common.tasks import wait_for_event

log = structlog.get_logger(__name__)

SHARE_DIR_ENV = "POLDER_CHILD_SHARE_DIR"
METRICS_FILE = "metrics.prom"
METRICS_INTERVAL_S = 0.5


# --- in the service's process ------------------------------------------------------------------


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


@contextlib.contextmanager
def share_folder(
    prefix: str, wanted: bool = True, parent: Path | None = None
) -> Iterator[Path | None]:
    """A folder a helper process leaves its metrics in for its parent (None when there is no
    helper), removed afterwards; in ``parent`` (the system's temporary folder by default).

    Its name carries this process's pid and pid namespace, so that a process killed before it
    could remove its folder (SIGKILL, the OOM killer) leaves one the next start recognises as
    orphaned: folders of this prefix whose process is gone are removed first."""
    if not wanted:
        yield None
        return
    where = Path(tempfile.gettempdir()) if parent is None else parent
    remove_orphans(where, prefix)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-{_pid_namespace()}-", dir=where))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_orphans(parent: Path, prefix: str) -> None:
    """Remove ``parent``'s folders named ``<prefix><pid>-<namespace>-...`` whose process, in
    this process's pid namespace, no longer exists. Anything else is left alone: a live pid,
    another namespace's folder (a container sharing the folder: its pids are not ours to
    test), a name without a pid, a symlink."""
    here = _pid_namespace()
    for path in parent.glob(f"{prefix}*"):
        pid, namespace, _ = (path.name.removeprefix(prefix).split("-", 2) + ["", ""])[:3]
        if namespace == here and _orphaned(pid) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _pid_namespace() -> str:
    """The id of this process's pid namespace (Linux), else "0"."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return "0"
    digits = "".join(c for c in link if c in "0123456789")
    return digits or "0"


def _orphaned(pid: str) -> bool:
    """Whether ``pid`` (as named) is a process that no longer exists; a name that is not a
    plain positive pid is never orphaned."""
    if not (pid.isascii() and pid.isdigit() and 0 < len(pid) <= 10):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):  # someone else's; out of range
        return False
    return False


class ChildProcess:
    """Starts ``python -m <module>`` and keeps one running until ``stop``."""

    def __init__(self, module: str, settings: Settings, share: Path) -> None:
        self.module = module
        self.settings = settings
        self.share = share
        self.metrics_file = share / METRICS_FILE
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def run(self, stop: asyncio.Event) -> None:
        env = {**settings_env(self.settings), SHARE_DIR_ENV: str(self.share)}
        while not stop.is_set():
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", self.module, env=env
            )
            self.starts += 1
            waiter = asyncio.create_task(self.process.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if waiter.done():
                log.error(
                    "helper process exited; restarting", module=self.module, code=waiter.result()
                )
                await wait_for_event(stop, 1.0)
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
        except asyncio.CancelledError:
            # The service's shutdown gives its tasks less than 10 s: never leave the helper
            # behind, whatever the parent does next (tests keep running in the same process).
            process.kill()
            raise


class MergedRegistry(CollectorRegistry):
    """The service's own metrics plus its helper's (from the helper's exposition file), summed
    by name and labels (e.g. dispatch's API and matcher both count offers, each by the outcomes
    it decides)."""

    def __init__(self, own: CollectorRegistry, file: Path) -> None:
        super().__init__(auto_describe=False)
        self.own = own
        self.file = file

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for family in self.own.collect():
            families[family.name] = _copy(family)
        for family in self._helper_families():
            mine = families.get(family.name)
            if mine is None and family.name.endswith("_created"):
                # the text format gives a counter's `_created` a family of its own; ours
                # holds it as a sample of the counter: one HELP line per name, not two
                mine = families.get(family.name.removesuffix("_created"))
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

    def _helper_families(self) -> list[Metric]:
        try:
            text = self.file.read_text()
        except FileNotFoundError:
            return []
        return list(text_string_to_metric_families(text))


def _copy(family: Metric) -> Metric:
    copy = Metric(family.name, family.documentation, family.type, family.unit)
    copy.samples = list(family.samples)
    return copy


# --- in the helper process ---------------------------------------------------------------------


async def write_metrics(registry: CollectorRegistry, share: Path, stop: asyncio.Event) -> None:
    """Write the registry's exposition where the service reads it, every half second."""
    path = share / METRICS_FILE
    tmp = path.with_suffix(".tmp")
    while not stop.is_set():
        tmp.write_bytes(generate_latest(registry))
        tmp.replace(path)
        await wait_for_event(stop, METRICS_INTERVAL_S)


async def watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Stop when the process that started this one is gone."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("parent process gone; stopping")
            stop.set()
            return
        await wait_for_event(stop, 1.0)


async def run_until_stopped(res: Resources, stop: asyncio.Event) -> None:
    """Wait until ``stop`` is set; raise if a background task of ``res`` ends first."""
    stopped = asyncio.create_task(stop.wait())
    try:
        while not stopped.done():
            await asyncio.wait([stopped, *res.tasks], return_when=asyncio.FIRST_COMPLETED)
            ended = [t for t in res.tasks if t.done()]
            if ended:
                raise RuntimeError(f"task ended: {ended[0].get_name()}")
    finally:
        stopped.cancel()


def child_main(run: Callable[[Settings, Path | None, asyncio.Event], Awaitable[None]]) -> None:
    """The entry point of a helper process: settings from POLDER_*, stop on SIGTERM/SIGINT or
    when the parent is gone; ``run(settings, share_dir, stop)`` does the work."""
    import uvloop  # comes with uvicorn[standard], as for the service itself

    async def main() -> None:
        settings = Settings()
        configure_logging(settings.log_level, json=settings.log_json)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.create_task(watch_parent(os.getppid(), stop))
        share = os.environ.get(SHARE_DIR_ENV)
        try:
            await run(settings, Path(share) if share else None, stop)
        finally:
            watcher.cancel()

    gctune.settle()  # as `polder serve` does
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())
