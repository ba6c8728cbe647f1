"""The demo `polder up --demo` runs: back-to-back simulation rounds until it is stopped.

Each round is a full `polder simulate` run (its own seed, its own workers) whose report goes to
``<data dir>/reports/<UTC time>/``; ``reports/latest`` points at the newest finished one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from polder.common.settings import Settings
from polder.simulator.run import Options, simulate


@dataclass(frozen=True)
class Demo:
    drivers: int = 200
    minutes: float = 5.0
    seed: int = 1


def link_latest(reports: Path, directory: Path) -> Path:
    latest = reports / "latest"
    tmp = reports / ".latest.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(directory.name)
    os.replace(tmp, latest)
    return latest


async def run_demo(settings: Settings, demo: Demo, stop: asyncio.Event) -> None:
    """Rounds until ``stop``; cancelling the task abandons the running round unreported."""
    reports = settings.data_dir.resolve() / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    round_no = 0
    while not stop.is_set():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        directory = reports / stamp
        options = Options(
            drivers=demo.drivers,
            minutes=demo.minutes,
            seed=demo.seed + round_no,
            report_dir=directory,
            live=False,
        )
        print(
            f"Demo round {round_no + 1}: {demo.drivers} workers for {demo.minutes:g} min "
            f"(seed {options.seed}); report in {directory}",
            flush=True,
        )
        code, _ = await simulate(settings, options, stop=stop)
        latest = link_latest(reports, directory)
        print(
            f"Demo round {round_no + 1} {'checked out' if code == 0 else 'FOUND MISMATCHES'}: "
            f"latest report {latest / 'report.md'}",
            flush=True,
        )
        round_no += 1
