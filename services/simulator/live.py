"""The live progress display: the simulator's own figures, and billing's waiting report.

On a terminal it is a rich table redrawn every second; otherwise (CI, a pipe) one line every
ten seconds. Billing's report is asked for every 20 s, less often if it is slow to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from polder.common.auth import Role
from polder.common.tasks import wait_for_event
from polder.simulator.agents import Sim
from polder.simulator.observations import Progress, progress


class LiveView:
    def __init__(self, sim: Sim, operator: str, live: bool) -> None:
        self.sim = sim
        self.operator = operator
        self.live = live
        self.phase = "running"
        self.unpaid_share: float | None = None
        self.billing_workers: int | None = None
        self._stop = asyncio.Event()
        self.console = Console()

    def stop(self) -> None:
        self._stop.set()

    async def _billing(self) -> None:
        """Billing's view so far: unpaid waiting as a share of online time."""
        sim = self.sim
        every = 20.0
        while not self._stop.is_set():
            await wait_for_event(self._stop, every)
            if self._stop.is_set():
                return
            started = time.monotonic()
            r = await sim.api.call(
                "billing",
                "GET",
                "/v1/reports/waiting",
                Role.OPERATOR,
                self.operator,
                params={"from": sim.wall0.isoformat(), "group_by": "hour"},
            )
            took = time.monotonic() - started
            every = max(20.0, 10 * took)  # never let the display load billing much
            if r.ok:
                totals = r.body["totals"]
                online = float(totals["online_s"])
                unpaid = float(totals["unpaid_waiting_h"]) * 3600
                self.unpaid_share = unpaid / online if online else None
                self.billing_workers = int(r.body["workers"])

    def table(self, p: Progress) -> Table:
        sim = self.sim
        t = Table(title=f"Polder simulation {sim.prefix} · {self.phase}", show_header=False)
        t.add_column(style="bold")
        t.add_column(justify="right")
        elapsed = sim.t()
        t.add_row("elapsed", f"{elapsed:5.0f} s of {sim.run_s:.0f} s")
        t.add_row("workers online", str(p.workers_online))
        t.add_row("orders placed", str(p.orders_placed))
        t.add_row("orders / min (last minute)", f"{p.orders_per_min:.0f}")
        t.add_row("matched", str(p.matched))
        t.add_row("match rate", _pct(p.match_rate))
        t.add_row("median pickup ETA", _s(p.median_pickup_eta_s))
        t.add_row("trips completed", str(p.trips_completed))
        t.add_row("unpaid waiting share (billing)", _pct(self.unpaid_share))
        return t

    def line(self, p: Progress) -> str:
        return (
            f"[{self.sim.t():5.0f} s {self.phase}] online {p.workers_online} · orders "
            f"{p.orders_placed} ({p.orders_per_min:.0f}/min) · matched {p.matched} "
            f"({_pct(p.match_rate)}) · median pickup ETA {_s(p.median_pickup_eta_s)} · "
            f"completed {p.trips_completed} · unpaid waiting {_pct(self.unpaid_share)}"
        )

    def _progress(self) -> Progress:
        return progress(self.sim.workers.values(), self.sim.orders, self.sim.t())

    async def run(self) -> None:
        billing = asyncio.create_task(self._billing())
        try:
            if self.live:
                with Live(
                    self.table(self._progress()), console=self.console, refresh_per_second=2
                ) as live:
                    while not self._stop.is_set():
                        await wait_for_event(self._stop, 1.0)
                        live.update(self.table(self._progress()))
            else:
                while not self._stop.is_set():
                    await wait_for_event(self._stop, 10.0)
                    print(self.line(self._progress()), flush=True)
        finally:
            billing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await billing

    def summary(self, report: dict[str, Any], directory: Path) -> None:
        o, checks = report["orders"], report["checks"]
        print(
            f"Orders placed {o['placed']}, matched {o['matched']}, completed {o['completed']}, "
            f"cancelled {o['cancelled_by_customer']} (+{o['cancelled_at_run_end']} at the end), "
            f"expired {o['expired']}.",
            flush=True,
        )
        verdict = "passed" if checks["passed"] else f"FAILED ({len(checks['mismatches'])})"
        print(f"Self-checks {verdict}. Report: {directory.resolve() / 'report.md'}", flush=True)
        for m in checks["mismatches"][:20]:
            print(f"  mismatch: {m}", flush=True)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _s(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f} s"
