"""`polder simulate`: run a seeded city against a running Polder, check it, write the report."""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from polder.common.settings import Settings
from polder.simulator import report as reports
from polder.simulator.agents import Sim, WorkerAgent, cancel, customers
from polder.simulator.checks import run_checks
from polder.simulator.city import get_city
from polder.simulator.client import Polder
from polder.simulator.live import LiveView
from polder.simulator.model import Behaviour, plan_shift
from polder.simulator.observations import latencies


@dataclass(frozen=True)
class Options:
    drivers: int = 50
    minutes: float = 1.0
    seed: int = 1
    city: str = "amsterdam"
    order_rate_per_min: float | None = None  # default: 0.4 per worker
    report_dir: Path = Path("simulation")
    trip_scale: float | None = None  # default: shorter trips for short runs
    live: bool | None = None  # default: when stdout is a terminal
    charts: bool = True

    def resolved(self) -> Options:
        rate = self.order_rate_per_min
        if rate is None:
            rate = round(0.4 * self.drivers, 2)
        scale = self.trip_scale
        if scale is None:
            # city-sized trips take 3-15 min: a short run scales them down to fit in it
            scale = round(min(1.0, max(0.05, self.minutes / 30.0)), 3)
        return replace(self, order_rate_per_min=rate, trip_scale=scale)


async def wait_ready(api: Polder, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    for name in api.urls:
        while True:
            if await api.ready(name):
                break
            if asyncio.get_running_loop().time() > deadline:
                raise SystemExit(
                    f"polder simulate: {name} at {api.urls[name]} is not ready; "
                    "is `polder up` running?"
                )
            await asyncio.sleep(0.5)


def drain_s(run_s: float, trip_scale: float) -> float:
    """How long workers get after the run to finish their trips (then riders get out early)."""
    return max(20.0, min(180.0, 600.0 * trip_scale))


async def simulate(
    settings: Settings,
    options: Options,
    stop: asyncio.Event | None = None,
    hard_stop: asyncio.Event | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run, check, report. Returns the exit code (non-zero on a mismatch) and the report."""
    o = options.resolved()
    assert o.order_rate_per_min is not None and o.trip_scale is not None
    city = get_city(o.city)
    behaviour = Behaviour(trip_scale=o.trip_scale)
    api = Polder(settings)
    try:
        await wait_ready(api)
        run_s = o.minutes * 60.0
        sim = Sim(
            api=api,
            city=city,
            behaviour=behaviour,
            seed=o.seed,
            prefix=f"sim-{o.seed}-{secrets.token_hex(3)}",
            run_s=run_s,
            drain_s=drain_s(run_s, o.trip_scale),
            order_rate_per_min=o.order_rate_per_min,
            customers=max(10, o.drivers * 4),
        )
        # The caller's events end the run early; the run's own ending must not set them.
        relays = [
            asyncio.create_task(_relay(outer, inner))
            for outer, inner in ((stop, sim.stopping), (hard_stop, sim.hard_stop))
            if outer is not None
        ]
        shifts = random.Random(f"{o.seed}:shifts")
        agents = [
            WorkerAgent(sim, i, plan_shift(city, behaviour, run_s, i, shifts))
            for i in range(o.drivers)
        ]
        operator = f"{sim.prefix}-ops"
        live = o.live if o.live is not None else sys.stdout.isatty()
        view = LiveView(sim, operator, live=live)
        view_task = asyncio.create_task(view.run())
        workers = [asyncio.create_task(a.run()) for a in agents]
        demand = asyncio.create_task(customers(sim))
        try:
            await sim.sleep(run_s, sim.stopping)
            view.phase = "finishing trips"
            sim.stopping.set()
            await demand
            _, pending = await asyncio.wait(workers, timeout=sim.drain_s)
            if pending:
                sim.hard_stop.set()
                await asyncio.wait(pending)
            for w in workers:
                if w.exception() is not None:
                    sim.problems.append(f"worker task failed: {w.exception()!r}")
            if sim.background:
                await asyncio.gather(*sim.background)
            # Customers still waiting give up: every order ends in a state both sides know.
            view.phase = "closing open orders"
            open_orders = [
                x
                for x in sim.orders
                if x.order_id is not None
                and x.completed_t is None
                and not x.cancelled_by_customer
                and not x.cancelled_by_driver
            ]
            for x in open_orders:
                x.cancelled_at_end = True
            await asyncio.gather(*(cancel(sim, x) for x in open_orders))
            view.phase = "checking"
            result = await run_checks(sim, operator)
        finally:
            view.stop()
            await view_task
            # cancelled (Ctrl-C in the demo): nothing of the run may outlive it
            for task in [*relays, *workers, demand, *sim.background, *sim.fare_watch]:
                task.cancel()
        options_out: dict[str, Any] = {
            **asdict(o),
            "report_dir": str(o.report_dir),
            "drain_s": sim.drain_s,
        }
        options_out["order_rate_per_min"] = o.order_rate_per_min
        report = reports.build(sim, result, options_out, settings.batch_window_s)
        if o.charts:
            from polder.simulator.charts import draw

            lat = latencies(sim.orders)
            report["charts"] = draw(
                o.report_dir, report, result, lat["pickup_eta_s"], lat["pickup_drive_s"]
            )
        reports.write(o.report_dir, report)
        view.summary(report, o.report_dir)
        return (0 if report["checks"]["passed"] else 1), report
    finally:
        await api.close()


async def _relay(outer: asyncio.Event, inner: asyncio.Event) -> None:
    await outer.wait()
    inner.set()


def main(settings: Settings, options: Options) -> int:
    """The command: Ctrl-C once ends the run early (trips finish, checks run); twice abandons
    the running trips; a third time stops at once."""

    async def go() -> int:
        stop, hard = asyncio.Event(), asyncio.Event()
        presses = 0

        def on_signal() -> None:
            nonlocal presses
            presses += 1
            if presses == 1:
                print(
                    "\nEnding the run: trips finish, then the checks (Ctrl-C again to hurry)",
                    flush=True,
                )
                stop.set()
            elif presses == 2:
                hard.set()
            else:
                raise KeyboardInterrupt

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        code, _ = await simulate(settings, options, stop, hard)
        return code

    return asyncio.run(go())
