"""The `polder` command: up, serve, token."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pydantic import ValidationError

from polder.common import gctune
from polder.common.auth import Role, issue_token
from polder.common.logging import configure_logging
from polder.common.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SystemExit(f"polder: bad settings:\n{exc}") from exc


def cmd_up(args: argparse.Namespace) -> int:
    from polder.runtime.up import up
    from polder.simulator.demo import Demo

    settings = _settings()
    configure_logging(settings.log_level, json=False)
    demo = None
    if args.demo:
        if args.demo_drivers < 1 or args.demo_minutes <= 0:
            raise SystemExit("polder up: --demo-drivers must be at least 1, --demo-minutes > 0")
        demo = Demo(drivers=args.demo_drivers, minutes=args.demo_minutes, seed=args.demo_seed)
    return asyncio.run(up(settings, demo))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from polder.runtime.catalog import service_module

    settings = _settings()
    if not settings.database_url or not settings.kafka_bootstrap:
        raise SystemExit("polder serve needs POLDER_DATABASE_URL and POLDER_KAFKA_BOOTSTRAP")
    configure_logging(settings.log_level, json=settings.log_json)
    module = service_module(args.service)
    app = module.build_app(settings)
    gctune.settle()
    uvicorn.run(
        app,
        host=settings.host,
        port=args.port or settings.port_of(args.service),
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from polder.simulator.run import Options, main

    settings = _settings()
    configure_logging("WARNING", json=False)
    if args.drivers < 1 or args.minutes <= 0:
        raise SystemExit("polder simulate: --drivers must be at least 1 and --minutes positive")
    options = Options(
        drivers=args.drivers,
        minutes=args.minutes,
        seed=args.seed,
        city=args.city,
        order_rate_per_min=args.order_rate,
        report_dir=args.report,
        trip_scale=args.trip_scale,
        live=args.live,
        charts=not args.no_charts,
    )
    return main(settings, options)


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings()
    print(issue_token(settings, args.role, args.sub, args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_up = sub.add_parser(
        "up", help="start Postgres, the broker and every service; Ctrl-C stops all"
    )
    p_up.add_argument(
        "--demo",
        action="store_true",
        help="also run a simulated city (`polder simulate` rounds) until Ctrl-C",
    )
    p_up.add_argument("--demo-drivers", type=int, default=200, help="workers in the demo")
    p_up.add_argument("--demo-minutes", type=float, default=5.0, help="length of a round")
    p_up.add_argument("--demo-seed", type=int, default=1)
    p_up.set_defaults(func=cmd_up)

    p_serve = sub.add_parser("serve", help="run one service (what `polder up` starts per service)")
    p_serve.add_argument("service", choices=["location", "dispatch", "billing"])
    p_serve.add_argument("--port", type=int, default=None)
    p_serve.set_defaults(func=cmd_serve)

    p_sim = sub.add_parser(
        "simulate",
        help="drive a running system with a seeded city of workers and customers, then check it",
    )
    p_sim.add_argument("--drivers", type=int, default=50, help="workers (drivers and couriers)")
    p_sim.add_argument("--minutes", type=float, default=1.0, help="how long orders come in")
    p_sim.add_argument("--seed", type=int, default=1)
    p_sim.add_argument("--city", default="amsterdam", choices=["amsterdam"])
    p_sim.add_argument(
        "--order-rate",
        type=float,
        default=None,
        help="orders per minute on average (default 0.4 per worker)",
    )
    p_sim.add_argument(
        "--report",
        type=Path,
        default=Path("simulation"),
        help="directory for report.json, report.md and the charts",
    )
    p_sim.add_argument(
        "--trip-scale",
        type=float,
        default=None,
        help="multiplies trip distances and waits (default: minutes/30, max 1)",
    )
    p_sim.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live table (default: when stdout is a terminal)",
    )
    p_sim.add_argument("--no-charts", action="store_true")
    p_sim.set_defaults(func=cmd_simulate)

    p_token = sub.add_parser("token", help="print a signed bearer token for local use")
    p_token.add_argument("--role", required=True, choices=[r.value for r in Role])
    p_token.add_argument("--sub", required=True, help="the driver, customer or operator id")
    p_token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")
    p_token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
