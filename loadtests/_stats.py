"""Numbers for the reports: exact percentiles of samples, quantiles from Prometheus buckets,
scraping /metrics, and CPU time of processes from /proc."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of the samples, linear between closest ranks; NaN if empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bucket_quantile(buckets: Mapping[float, float], q: float) -> float:
    """Quantile from cumulative histogram buckets (le → count), interpolated linearly inside the
    bucket as Prometheus' histogram_quantile does. Inf if it lies in the +Inf bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return math.inf
            inside = count - prev_count
            frac = (rank - prev_count) / inside if inside > 0 else 1.0
            return prev_le + (le - prev_le) * frac
        prev_le, prev_count = le, count
    return math.inf


def bucket_share_within(buckets: Mapping[float, float], le: float) -> float:
    """Share of the observations at or below ``le``, which must be one of the histogram's bucket
    bounds: exact, unlike a quantile interpolated inside a bucket. NaN when there are none."""
    if le not in buckets:
        raise ValueError(f"{le} is not a bucket bound of this histogram: {sorted(buckets)}")
    total = buckets[max(buckets)]
    return buckets[le] / total if total > 0 else math.nan


@dataclass(frozen=True, slots=True)
class Scrape:
    """One reading of a Prometheus exposition, taken at ``at`` (epoch seconds)."""

    at: float
    samples: Mapping[tuple[str, Labels], float]

    @classmethod
    def parse(cls, at: float, text: str) -> Scrape:
        samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return cls(at, samples)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.samples.items() if n == name and want <= set(lab))

    def buckets(self, histogram: str, **labels: str) -> dict[float, float]:
        out: dict[float, float] = {}
        want = set(labels.items())
        for (n, lab), v in self.samples.items():
            if n == f"{histogram}_bucket" and want <= set(lab):
                le = float(dict(lab)["le"])
                out[le] = out.get(le, 0.0) + v
        return out


def bucket_delta(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    return {le: after[le] - before.get(le, 0.0) for le in after}


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def box_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores)."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / _TICKS


def cpu_snapshot(pids: Mapping[str, Iterable[int]]) -> dict[str, float]:
    out = {name: sum(cpu_seconds(p) for p in group) for name, group in pids.items()}
    out["box"] = box_busy_seconds()
    return out


def _ppid_and_cmdline(pid: int) -> tuple[int, str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return None
    return ppid, cmdline


def process_table() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of every process we can see."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _ppid_and_cmdline(int(entry))) is not None:
            table[int(entry)] = info
    return table


def pids_matching(needle: str, with_children: bool = True) -> list[int]:
    """Processes whose command line contains ``needle``, and (optionally) all their descendants."""
    procs = process_table()
    found = [pid for pid, (_, cmd) in procs.items() if needle in cmd]
    if not with_children:
        return found
    tree = set(found)
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sorted(tree)
