"""PNG charts of a run (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

from polder.simulator.checks import CheckResult  # noqa: E402
from polder.simulator.report import P1, P2, P3  # noqa: E402


def _save(fig: Any, directory: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(directory / name, dpi=100)
    plt.close(fig)
    return name


def time_shares(directory: Path, result: CheckResult) -> str:
    rows: list[tuple[str, list[float]]] = []
    for driver, s in result.statements.items():
        online = float(s["time"]["online_s"])
        if online > 0:
            shares = [sum(float(s["time"][k]) for k in keys) / online for keys in (P1, P2, P3)]
            rows.append((driver.rsplit("-", 1)[-1], shares))
    rows.sort(key=lambda r: r[1][0])
    rows = rows[:60]  # the busiest 60 (least waiting)
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.18 * len(rows) + 1.5)))
    names = [r[0] for r in rows]
    left = [0.0] * len(rows)
    for i, (label, color) in enumerate(
        (("P1 waiting for work", "#d95f02"), ("P2 to pickup", "#7570b3"), ("P3 on trip", "#1b9e77"))
    ):
        values = [r[1][i] for r in rows]
        ax.barh(names, values, left=left, label=label, color=color)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel("share of online time")
    ax.set_xlim(0, 1)
    ax.set_title("Time shares per worker (billing statements)")
    ax.legend(loc="lower right", fontsize="small")
    ax.tick_params(axis="y", labelsize=6)
    return _save(fig, directory, "time_shares.png")


def pickup_eta(
    directory: Path, report: dict[str, Any], etas: list[float], drives: list[float]
) -> str:
    fig, ax = plt.subplots(figsize=(8, 4))
    if etas:
        ax.hist(etas, bins=30, alpha=0.6, label="dispatch's pickup ETA")
    if drives:
        ax.hist(drives, bins=30, alpha=0.6, label="simulated drive to pickup")
    ax.set_xlabel("seconds")
    ax.set_ylabel("trips")
    ax.set_title("Pickup ETA distribution")
    if etas or drives:
        ax.legend()
    return _save(fig, directory, "pickup_eta.png")


def earnings(directory: Path, report: dict[str, Any]) -> str:
    items = report["earnings_per_online_hour"]
    names = list(items)
    fig, ax = plt.subplots(figsize=(8, 4))
    values = [items[n].get("per_online_hour_minor") or 0 for n in names]
    bars = ax.bar(names, [v / 100 for v in values], color="#1b9e77")
    for bar, n in zip(bars, names, strict=True):
        e = items[n]
        text = "not comparable" if "not_comparable" in e else e["currency"]
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("pay per online hour (major units)")
    ax.set_title("Earnings per online hour by pay policy")
    return _save(fig, directory, "earnings_by_policy.png")


def unpaid_by_cell(directory: Path, result: CheckResult) -> str:
    report = result.waiting_by_cell or {}
    groups = report.get("groups", [])

    def waiting_h(g: dict[str, Any]) -> float:
        return float(g["paid_waiting_h"]) + float(g["unpaid_waiting_h"])

    top = sorted(groups, key=lambda g: (-float(g["unpaid_waiting_h"]), -waiting_h(g)))[:25][::-1]
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.25 * len(top) + 1.5)))
    keys = [g["key"] for g in top]
    unpaid = [float(g["unpaid_waiting_h"]) * 60 for g in top]
    paid = [float(g["paid_waiting_h"]) * 60 for g in top]
    ax.barh(keys, unpaid, color="#d95f02", label="unpaid")
    ax.barh(keys, paid, left=unpaid, color="#bbbbbb", label="paid")
    ax.set_xlabel("waiting (minutes)")
    policy = report.get("policy", "the default policy")
    ax.set_title(f"Unpaid waiting by H3 cell under {policy} (billing's waiting report)")
    ax.legend(loc="lower right", fontsize="small")
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, directory, "unpaid_waiting_by_cell.png")


def draw(
    directory: Path,
    report: dict[str, Any],
    result: CheckResult,
    etas: list[float] | None = None,
    drives: list[float] | None = None,
) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    return [
        time_shares(directory, result),
        pickup_eta(directory, report, etas or [], drives or []),
        earnings(directory, report),
        unpaid_by_cell(directory, result),
    ]
