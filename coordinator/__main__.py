"""`python -m coordinator`: serve TripCoordinator until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio

from coordinator.app import start_coordinator
from coordinator.settings import CoordinatorSettings
from services.kit import logging as kit_logging
from services.kit.server import serve_until_signalled


async def _main() -> None:
    settings = CoordinatorSettings.from_env()
    kit_logging.configure("coordinator", fmt=settings.service.log_format, level=settings.service.log_level)
    running = await start_coordinator(settings)

    async def close() -> None:
        await running.engine.stop(settings.service.grace_seconds)
        await running.store.close()
        await running.participants.close()
        await running.db.dispose()

    await serve_until_signalled(running.built, grace_seconds=settings.service.grace_seconds, on_stop=close)


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
