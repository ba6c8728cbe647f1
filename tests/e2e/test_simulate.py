"""A short seeded simulation against the whole system, as `polder up` and `polder simulate`
run it: the self-checks pass and the figures are sane."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from polder.common.settings import Settings
from polder.runtime.infra import port_is_free
from polder.simulator.agents import Sim
from polder.simulator.checks import check_fares, check_order, check_statement
from polder.simulator.city import get_city
from polder.simulator.client import Polder
from polder.simulator.model import Behaviour
from polder.simulator.observations import OrderObs, WorkerObs
from tests.e2e.conftest import REPO, Up

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]


def test_a_short_simulation_checks_out(up: Up, tmp_path: Path) -> None:
    up.start()
    out = tmp_path / "report"
    run = up.polder(
        "simulate",
        "--drivers",
        "24",
        "--minutes",
        "0.75",
        "--seed",
        "7",
        "--order-rate",
        "24",
        "--report",
        str(out),
        "--no-live",
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "Self-checks passed" in run.stdout
    report = json.loads((out / "report.json").read_text())

    checks = report["checks"]
    assert checks["passed"] and checks["mismatches"] == []
    orders, workers, time = report["orders"], report["workers"], report["time"]
    assert orders["placed"] > 0 and orders["not_placed"] == 0
    assert orders["matched"] > 0
    assert orders["completed"] > 0
    # every placed order ended in a state dispatch and the simulator agree on
    assert sum(orders["final_status_in_dispatch"].values()) == orders["placed"]
    assert "unknown" not in orders["final_status_in_dispatch"]
    assert workers["went_online"] == 24 and workers["pings_sent"] > 0
    # every worker's statement was checked against its online time, and there was some
    assert report["billing_lag_s"]["statement_check_waited"]["count"] == 24
    assert time["online_h"] > 0
    shares = [time["p1_share"], time["p2_share"], time["p3_share"]]
    assert all(0.0 <= s <= 1.0 for s in shares) and abs(sum(shares) - 1.0) < 0.01
    assert time["p3_share"] > 0  # someone carried a rider or a parcel
    # every completed trip has a fare, seen after the trip ended
    assert report["billing_lag_s"]["trip_completed_to_fare"]["count"] == orders["completed"]
    assert report["latency_s"]["order_to_assignment"]["count"] == orders["matched"]
    # the default policy is comparable; policies of another currency are reported as such
    earnings = report["earnings_per_online_hour"]
    assert earnings["nl_hourly"]["per_online_hour_minor"] > 0
    assert set(earnings) == {"nl_hourly", "platform_share", "prop22", "nyc_tlc", "seattle_payup"}
    for chart in report["charts"]:
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").read_text().startswith("# Polder simulation, seed 7")

    # The same checks, fed a record that disagrees with the system, find the disagreements.
    found = asyncio.run(tampered_checks(up, report["run"]["ids"].removesuffix("-*")))
    assert found["statement"] is not None and "statement says" in found["statement"]
    assert found["order"] is not None and "dispatch answers 404" in found["order"]
    assert found["fares"] and "billing has no fare" in found["fares"][0]
    assert up.stop() == 0


async def tampered_checks(up: Up, prefix: str) -> dict[str, Any]:
    settings = Settings(
        location_port=int(up.env["POLDER_LOCATION_PORT"]),
        dispatch_port=int(up.env["POLDER_DISPATCH_PORT"]),
        billing_port=int(up.env["POLDER_BILLING_PORT"]),
    )
    api = Polder(settings)
    try:
        sim = Sim(api, get_city("amsterdam"), Behaviour(), 7, prefix, 45.0, 20.0, 24.0, 10)
        sim.wall0 -= timedelta(minutes=10)
        worker = WorkerObs(f"{prefix}-w0000", online=[(0.0, 0.1)], offline=[(1.0, 1.1)])
        statement, _ = await check_statement(sim, worker, deadline_s=1.0)
        ghost = OrderObs("k", f"{prefix}-c0000", "ride", 0.0, order_id=str(uuid.uuid4()))
        order = await check_order(sim, ghost)
        ghost.completed_t, ghost.trip_id, ghost.driver_id = 1.0, str(uuid.uuid4()), worker.driver_id
        sim.orders.append(ghost)
        fares = await check_fares(sim)
        return {"statement": statement, "order": order, "fares": fares}
    finally:
        await api.close()


def test_the_demo_runs_rounds_until_ctrl_c_and_leaves_a_checked_report(up: Up) -> None:
    # the README's first command, as a newcomer types it (smaller, so the test is short)
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1]
    assert first_block.startswith("make demo ")
    demo_args = "--demo-drivers 16 --demo-minutes 0.5 --demo-seed 3"
    up.start(command=["make", "--no-print-directory", "demo", f"DEMO_ARGS={demo_args}"])
    banner = "".join(up.lines)
    assert "/metrics" in banner and "reports" in banner
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(
        "Demo round 1 " in x and "latest report" in x for x in up.lines
    ):
        time.sleep(0.5)
    first = [x for x in up.lines if "Demo round 1 " in x and "latest report" in x]
    assert first and "checked out" in first[0], "".join(up.lines[-80:])
    # Ctrl-C in the middle of round 2: it is abandoned unreported, everything stops
    while time.monotonic() < deadline and not any("Demo round 2:" in x for x in up.lines):
        time.sleep(0.2)
    time.sleep(5)  # workers are online, orders are on their way
    code = up.stop()
    output = "".join(up.lines)
    assert "Stopped." in output, output[-4000:]
    assert code in (0, -signal.SIGINT, 2), output[-4000:]  # make reports the interrupt
    for service in ("LOCATION", "DISPATCH", "BILLING", "BROKER"):
        assert port_is_free("127.0.0.1", int(up.env[f"POLDER_{service}_PORT"]))
    latest = Path(up.env["POLDER_DATA_DIR"]) / "reports" / "latest"
    report = json.loads((latest / "report.json").read_text())
    assert report["run"]["seed"] == 3  # round 1's
    assert report["checks"]["passed"], report["checks"]
    assert report["orders"]["placed"] > 0 and report["workers"]["went_online"] == 16
