"""The trace writer in its own process: storing every accepted ping in ``pings`` (a consumer
group on ``polder.driver.locations``) no longer takes turns with ingest on the service's event
loop. The location service starts it (``common.children.ChildProcess``) and merges its metrics.

    python -m polder.location.trace_process   (settings from POLDER_* as for any service)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from polder.common.children import child_main, run_until_stopped, write_metrics
from polder.common.service import service_resources
from polder.common.settings import Settings
from polder.location.handlers import consume_traces
from polder.location.metrics import LocationMetrics

SERVICE = "location"
MIGRATIONS = "polder.location.migrations"


async def run(settings: Settings, share: Path | None, stop: asyncio.Event) -> None:
    metrics = LocationMetrics(CollectorRegistry())
    async with service_resources(settings, SERVICE, MIGRATIONS, metrics, pool_size=4) as res:
        consume_traces(res, settings, metrics)
        if share is not None:
            res.run(write_metrics(metrics.registry, share, res.stop), "trace-metrics")
        await run_until_stopped(res, stop)


def main() -> None:
    child_main(run)


if __name__ == "__main__":
    main()
