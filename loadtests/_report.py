"""Printing result tables and writing them to ``loadtests/results/``."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def fmt(value: float, unit: str = "", digits: int = 1) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "beyond the top bucket"
    return f"{value:,.{digits}f}{unit}"


def table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    rule = "-" * (width + vwidth + 5)
    lines = [title, rule, *(f"  {k:<{width}}   {v}" for k, v in rows), rule]
    return "\n".join(lines)


# What ``host_loop_s`` took on a fast day of this machine, as the sessions' notes recorded it:
# the host's speed drifts by two between days, and every figure of a saturated benchmark with it.
FAST_HOST_LOOP_S = 0.44


# The loop as the sessions' notes time it (``python3 -c``): at module level, where each name is
# a dictionary lookup (inside a function the same loop runs about four times as fast).
_LOOP = compile("s = 0\nfor i in range(5_000_000):\n    s += i\n", "<host-loop>", "exec")


def host_loop_s(repeat: int = 3) -> float:
    """The fastest of ``repeat`` pure-Python loops of 5 million additions, in CPU seconds: how
    fast this host is today (``FAST_HOST_LOOP_S`` on a fast day). Run it on a quiet box."""
    best = math.inf
    for _ in range(repeat):
        started = time.process_time()
        exec(_LOOP, {})  # noqa: S102 (our own constant code)
        best = min(best, time.process_time() - started)
    return best


def host_row(seconds: float) -> tuple[str, str]:
    """A report row: the host's speed after the run."""
    return (
        "host: 5 M-addition loop after the run",
        f"{seconds:.2f} s ({seconds / FAST_HOST_LOOP_S:.1f} × a fast day's {FAST_HOST_LOOP_S} s)",
    )


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
    }


def source_version() -> dict[str, Any]:
    """The commit measured, and whether services/ had uncommitted changes at the time."""
    root = RESULTS.parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "services_modified": bool(git("status", "--porcelain", "--", "services", "schemas")),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _clean(value: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null and "inf"."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return "inf" if math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_result(name: str, command: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {
        "benchmark": name,
        "command": command,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "source": source_version(),
        **data,
    }
    path.write_text(json.dumps(_clean(doc), indent=2) + "\n")
    return path
