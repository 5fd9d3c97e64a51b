"""Serve the dashboard until SIGTERM/SIGINT: `python -m coordinator.dashboard` (as `tripmesh up` starts it)
and `tripmesh dashboard`.

TRIPMESH_DASHBOARD_HOST (127.0.0.1), TRIPMESH_DASHBOARD_PORT (8080) and
TRIPMESH_DASHBOARD_COORDINATOR_ADDRESS (127.0.0.1:50050): where to listen and which coordinator to ask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import structlog
from aiohttp import web

from coordinator.dashboard.app import build_app
from services.kit import logging as kit_logging
from services.kit.settings import env, env_int

DEFAULT_PORT = 8080
SHUTDOWN_SECONDS = 2.0  # open live pages (server-sent events) are cut after this on SIGTERM

log = structlog.get_logger("tripmesh.dashboard")


@dataclass(frozen=True)
class DashboardSettings:
    host: str
    port: int
    coordinator_address: str

    @classmethod
    def from_env(cls) -> DashboardSettings:
        c = "dashboard"
        return cls(
            host=env(c, "host", os.environ.get("TRIPMESH_HOST", "127.0.0.1")),
            port=env_int(c, "port", DEFAULT_PORT),
            coordinator_address=env(c, "coordinator_address", "127.0.0.1:50050"),
        )


def serve(settings: DashboardSettings) -> None:
    log.info(
        "dashboard_started",
        url=f"http://{settings.host}:{settings.port}/",
        coordinator=settings.coordinator_address,
    )
    web.run_app(
        build_app(settings.coordinator_address),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=SHUTDOWN_SECONDS,
        print=None,
        access_log=None,
    )


def main() -> None:
    kit_logging.configure(
        "dashboard",
        fmt=os.environ.get("TRIPMESH_LOG_FORMAT", "console"),
        level=os.environ.get("TRIPMESH_LOG_LEVEL", "info"),
    )
    serve(DashboardSettings.from_env())
