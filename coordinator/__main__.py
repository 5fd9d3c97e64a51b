"""`python -m coordinator`: serve TripCoordinator until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from coordinator import memtrace
from coordinator.app import start_coordinator
from coordinator.settings import CoordinatorSettings
from services.kit import logging as kit_logging
from services.kit.metrics import Metrics, MetricsSettings
from services.kit.server import serve_until_signalled
from services.kit.tracing import Tracing


async def _main() -> None:
    settings = CoordinatorSettings.from_env()
    tracing = Tracing.from_env("coordinator")
    kit_logging.configure(
        "coordinator", fmt=settings.service.log_format, level=settings.service.log_level, trace_ids=bool(tracing)
    )
    memtrace.install(asyncio.get_running_loop())
    metrics_settings = MetricsSettings.from_env("coordinator", host=settings.service.host)
    metrics = Metrics("coordinator") if metrics_settings.enabled else None
    # Bound first: a configured metrics port that is taken stops the process before it serves anything.
    if metrics is not None and metrics.serve_configured(metrics_settings) is None:
        metrics = None  # a default port was taken: no metrics, as said in the log
    running = await start_coordinator(settings, metrics=metrics, tracing=tracing)

    async def close() -> None:
        await running.close(settings.service.grace_seconds)

    await serve_until_signalled(running.built, grace_seconds=settings.service.grace_seconds, on_stop=close)


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
