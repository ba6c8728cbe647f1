"""`make bench`'s runner: a benchmark that runs out of time is asked to stop, not killed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from loadtests import bench

CHILD = """
import signal, sys, time
def stop(signum, frame):
    open(sys.argv[1], "w").write("stopped in order")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(60)
"""

STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def _start(code: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_benchmark_out_of_time_gets_sigterm_and_cleans_up(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    proc = _start(CHILD, str(marker))
    bench.stop_in_order(proc)
    assert proc.returncode == 0
    assert marker.read_text() == "stopped in order"


def test_one_that_ignores_sigterm_is_killed_after_the_grace(monkeypatch) -> None:
    monkeypatch.setattr(bench, "STOP_GRACE_S", 0.5)
    proc = _start(STUBBORN)
    bench.stop_in_order(proc)
    assert proc.returncode == -9
