"""Load generator processes: each owns a disjoint set of drivers and sends their pings.

A process runs ``concurrency`` tasks; each task owns a slice of the process's drivers and sends
one batch for each of them in turn, waiting for the answer, so a driver never has two batches in
flight and its pings stay in order. Every answer is checked: accepted pings, rejections by
reason, errors by kind. A driver whose request fails (timeout, broken socket) is counted and
stops sending. Latency samples are kept for the requests that complete inside the measured
window; the warm-up and the tail (requests in flight when the window closes) are tallied apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from typing import Any, Literal

import aiohttp
import httpx
import orjson
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from loadtests._drivers import SimDriver, make_drivers
from polder.common.auth import issue_token
from polder.common.settings import Settings

if importlib.util.find_spec("sniffio") is None:
    # httpcore tries `import sniffio` whenever it makes a lock; a failed import is not cached
    # and costs a search of sys.path each time (~12 % of a load generator's CPU). None in
    # sys.modules makes the import fail at once, and httpcore then assumes asyncio.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

Mode = Literal["http", "ws"]
Phase = Literal["warmup", "window", "tail"]
PHASES: tuple[Phase, ...] = ("warmup", "window", "tail")
FAILURES = (aiohttp.ClientError, httpx.HTTPError, WebSocketException, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Plan:
    mode: Mode
    base_url: str
    driver_ids: list[str]
    batch: int
    concurrency: int
    seed: int
    requests_per_s: float | None = None  # this process's pace; None = as fast as answers come


@dataclass(frozen=True, slots=True)
class Window:
    """Wall-clock times (epoch seconds) shared by every process."""

    start: float  # load starts (warm-up)
    measure_from: float
    measure_to: float  # no request is started after this

    def phase(self, t: float) -> Phase:
        if t < self.measure_from:
            return "warmup"
        return "window" if t <= self.measure_to else "tail"


@dataclass(slots=True)
class Tally:
    requests: int = 0
    requests_with_accepted: int = 0
    pings_sent: int = 0
    pings_accepted: int = 0
    drivers_dropped: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.requests_with_accepted += other.requests_with_accepted
        self.pings_sent += other.pings_sent
        self.pings_accepted += other.pings_accepted
        self.drivers_dropped += other.drivers_dropped
        self.rejected.update(other.rejected)
        self.errors.update(other.errors)
        self.latencies_s.extend(other.latencies_s)


@dataclass(slots=True)
class WorkerReport:
    worker: int
    tallies: dict[Phase, Tally]
    fatal: str | None = None


class Recorder:
    def __init__(self, window: Window) -> None:
        self.window = window
        self.tallies: dict[Phase, Tally] = {p: Tally() for p in PHASES}

    def answer(self, sent: int, started: float, done: float, status: int, body: Any) -> None:
        """Tally one answer: a body with ``accepted`` and ``rejected`` (202 / ack), or an error."""
        phase = self.window.phase(done)
        tally = self.tallies[phase]
        tally.requests += 1
        tally.pings_sent += sent
        if phase == "window":
            tally.latencies_s.append(done - started)
        if status in (200, 202) and isinstance(body, dict) and "accepted" in body:
            tally.pings_accepted += int(body["accepted"])
            tally.requests_with_accepted += int(body["accepted"] > 0)
            tally.rejected.update(str(r.get("reason")) for r in body.get("rejected", ()))
            return
        code = body.get("error", {}).get("code") if isinstance(body, dict) else None
        tally.errors[f"{status} {code or 'unexpected body'}"] += 1

    def failure(self, sent: int, kind: str) -> None:
        tally = self.tallies[self.window.phase(time.time())]
        tally.requests += 1
        tally.pings_sent += sent
        tally.drivers_dropped += 1
        tally.errors[kind] += 1


class Pacer:
    """Spaces request starts evenly at a fixed rate, shared by all tasks of a process.

    A slot missed while every task waited for an answer is made up at once, but only within
    ``catch_up_s``: short stalls do not lower the offered rate, while a service that falls
    behind for longer turns the load closed-loop (bounded by the requests in flight), and the
    achieved rate shows it.
    """

    def __init__(self, per_s: float | None, catch_up_s: float = 0.1) -> None:
        self.interval = 1.0 / per_s if per_s else 0.0
        self.catch_up_s = catch_up_s
        self.next = 0.0

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now - self.catch_up_s, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


# (driver, JSON array of pings) → (status, decoded answer)
SendBatch = Callable[[SimDriver, bytes], Awaitable[tuple[int, Any]]]
Ready = Callable[[], Awaitable[Window]]


def decode(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


async def _drive(
    drivers: list[SimDriver],
    send: SendBatch,
    batch: int,
    rec: Recorder,
    rng: random.Random,
    pacer: Pacer,
) -> None:
    """Send a batch for each owned driver in turn until the window closes."""
    await asyncio.sleep(max(0.0, rec.window.start - time.time()))
    active = list(drivers)
    while active:
        for d in list(active):
            await pacer.wait()
            now = time.time()
            if now > rec.window.measure_to:
                return
            pings = d.batch(batch, int(now * 1000), rng)
            if pings is None:  # this driver sent less than `batch` ms ago
                await asyncio.sleep(0.002)
                continue
            try:
                status, body = await send(d, pings)
            except FAILURES as exc:
                rec.failure(batch, type(exc).__name__)
                active.remove(d)
                continue
            rec.answer(batch, now, time.time(), status, body)


async def _drive_all(
    plan: Plan, drivers: list[SimDriver], senders: list[SendBatch], window: Window
) -> Recorder:
    """One task per sender, each with its own slice of the drivers."""
    rec = Recorder(window)
    rng = random.Random(plan.seed)
    pacer = Pacer(plan.requests_per_s)
    slices = [drivers[i :: len(senders)] for i in range(len(senders))]
    await asyncio.gather(*(
        _drive(s, send, plan.batch, rec, rng, pacer)
        for s, send in zip(slices, senders, strict=True)
        if s
    ))
    return rec


def _tokens(ids: list[str]) -> dict[str, str]:
    settings = Settings()  # the service's signing key: both read POLDER_JWT_SECRET or the dev key
    return {d: issue_token(settings, "driver", d) for d in ids}


def _http_sender(session: aiohttp.ClientSession, tokens: dict[str, str]) -> SendBatch:
    async def send(d: SimDriver, pings: bytes) -> tuple[int, Any]:
        async with session.post(
            f"/v1/drivers/{d.driver_id}/locations",
            data=b'{"pings":' + pings + b"}",
            headers={
                "authorization": f"Bearer {tokens[d.driver_id]}",
                "content-type": "application/json",
            },
        ) as resp:
            return resp.status, decode(await resp.read())

    return send


async def run_http(plan: Plan, drivers: list[SimDriver], ready: Ready) -> Recorder:
    """``concurrency`` keep-alive connections in one aiohttp session (a seventh of httpx's
    client CPU per request: the load generators share the box with the service)."""
    tokens = _tokens(plan.driver_ids)
    async with aiohttp.ClientSession(
        plan.base_url,
        connector=aiohttp.TCPConnector(limit=plan.concurrency),
        timeout=aiohttp.ClientTimeout(total=30.0),
    ) as session:
        senders = [_http_sender(session, tokens)] * plan.concurrency
        return await _drive_all(plan, drivers, senders, await ready())


async def _open_sockets(plan: Plan) -> dict[str, ClientConnection]:
    """One WebSocket per driver, all open at once as a fleet of phones would hold them."""
    tokens = _tokens(plan.driver_ids)
    ws_base = plan.base_url.replace("http://", "ws://", 1)
    gate = asyncio.Semaphore(100)

    async def one(driver_id: str) -> tuple[str, ClientConnection]:
        async with gate:
            ws = await connect(
                f"{ws_base}/v1/drivers/{driver_id}/locations/ws?token={tokens[driver_id]}",
                compression=None, proxy=None, open_timeout=60, ping_interval=None,
            )
            return driver_id, ws

    return dict(await asyncio.gather(*(one(d) for d in plan.driver_ids)))


async def run_ws(plan: Plan, drivers: list[SimDriver], ready: Ready) -> Recorder:
    sockets = await _open_sockets(plan)

    async def send(d: SimDriver, pings: bytes) -> tuple[int, Any]:
        ws = sockets[d.driver_id]
        await ws.send(pings, text=True)
        try:
            async with asyncio.timeout(30):  # cheaper than wait_for's extra task per frame
                body = decode(await ws.recv())
        except TimeoutError:
            await ws.close()  # a late ack would be read as the next frame's
            raise
        return (200 if isinstance(body, dict) and "accepted" in body else 0), body

    try:
        return await _drive_all(plan, drivers, [send] * plan.concurrency, await ready())
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets.values()), return_exceptions=True)


async def _worker(worker: int, plan: Plan, out: Queue[Any], windows: Queue[Any]) -> WorkerReport:
    drivers = make_drivers(plan.driver_ids, int(time.time() * 1000), random.Random(plan.seed))

    async def ready() -> Window:
        out.put(("ready", worker, None))
        window: Window = await asyncio.to_thread(windows.get)
        return window

    runner = run_http if plan.mode == "http" else run_ws
    rec = await runner(plan, drivers, ready)
    return WorkerReport(worker, rec.tallies)


def wait_for(out: Queue[Any], kind: str, n: int, timeout_s: float) -> list[Any]:
    """Collect ``n`` messages ``(kind, worker, payload)`` of ``kind`` from load processes; a
    report whose ``fatal`` is set ends the wait with an error."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        msg_kind, worker, payload = out.get(timeout=max(0.1, deadline - time.monotonic()))
        if msg_kind == "report" and getattr(payload, "fatal", None):
            raise RuntimeError(f"load generator {worker} failed: {payload.fatal}")
        if msg_kind == kind:
            got.append(payload)
    return got


def worker_entry(worker: int, plan: Plan, out: Queue[Any], windows: Queue[Any]) -> None:
    """Process entry point: run the plan, then put ("report", worker, WorkerReport) on ``out``."""
    try:
        report = uvloop.run(_worker(worker, plan, out, windows))
    except KeyboardInterrupt:
        return
    except Exception as exc:  # reported to the parent, which fails the run loudly
        fatal = f"{type(exc).__name__}: {exc}"
        report = WorkerReport(worker, {p: Tally() for p in PHASES}, fatal=fatal)
    with contextlib.suppress(Exception):
        out.put(("report", worker, report))
