"""Start a participant service: database, migrations and seed, store, server, sweeper; one function for all four.

`start_participant` is what tests call (port 0, temporary database); `run_participant` is each
service's `__main__`: it does the same from the environment and serves until signalled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import MetaData, Table
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit import logging as kit_logging
from services.kit.clock import Clock, SystemClock
from services.kit.db import Database, make_engine
from services.kit.metrics import DbGauge, Metrics, MetricsSettings
from services.kit.migrate import prepare
from services.kit.server import BuiltServer, ServiceBinding, build_server, serve_until_signalled
from services.kit.settings import ServiceSettings, env_bool, env_float
from services.kit.tracing import Tracing, shut_down
from services.participant.domain import ParticipantDomain
from services.participant.states import Status
from services.participant.store import ReservationStore
from services.participant.sweeper import sweep_forever

log = structlog.get_logger("tripmesh.participant")


@dataclass(frozen=True)
class ParticipantSpec:
    """Everything that makes one participant service: its tables, domain, servicer and gRPC names."""

    component: str
    metadata: MetaData
    reservations: Table
    full_name: str
    register: Callable[[Any, Any], None]
    make_domain: Callable[[AsyncEngine, Clock], ParticipantDomain[Any]]
    make_servicer: Callable[[ReservationStore[Any], Any], Any]
    background: Callable[[AsyncEngine, Clock], list[Coroutine[Any, Any, None]]] = field(
        default=lambda _engine, _clock: []
    )


@dataclass
class RunningParticipant:
    built: BuiltServer
    db: Database  # the reservation transactions (one worker thread)
    engine: AsyncEngine  # catalogue queries, the outbox, and readers such as tests
    store: ReservationStore[Any]
    domain: Any
    metrics: Metrics | None = None
    tracing: Tracing | None = None

    @property
    def port(self) -> int:
        return self.built.port

    async def stop(self, grace: float | None = None) -> None:
        await self.built.stop(grace)
        await self.close()

    async def close(self) -> None:
        """Everything but the server: metrics, the last spans, the databases."""
        await shut_down(self.metrics, self.tracing)
        await self.dispose()

    async def dispose(self) -> None:
        await self.db.dispose()
        await self.engine.dispose()


def holds_gauge(component: str, store: ReservationStore[Any]) -> DbGauge:
    """`tripmesh_reservations{participant, state}`: read from the database when scraped."""

    async def query() -> dict[tuple[str, ...], float]:
        counts = await store.count_by_status()
        return {(component, status.lower()): n for status, n in counts.items()}

    return DbGauge(
        "tripmesh_reservations",
        "Reservations in this participant's database by state (tombstones count as cancelled).",
        ["participant", "state"],
        query,
        asyncio.get_running_loop(),
        always=[(component, status.value.lower()) for status in Status],
    )


async def start_participant(
    spec: ParticipantSpec,
    *,
    database_url: str,
    address: str = "127.0.0.1:0",
    clock: Clock | None = None,
    hold_seconds: float = 900.0,
    sweep_seconds: float | None = 1.0,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
    migrate: bool = True,
) -> RunningParticipant:
    """`metrics` (served or not, the caller's choice) gets the gRPC and holds metrics; `tracing` the spans."""
    clock = clock or SystemClock()
    engine = make_engine(database_url)
    try:
        # Alembic upgrade and seed (services/kit/migrate.py), or with migrate=False a check that the
        # database is at this code's head revision.
        await prepare(engine, spec.component, migrate_on_start=migrate)
    except BaseException:
        await engine.dispose()
        raise
    db = Database(database_url)
    domain = spec.make_domain(engine, clock)
    store: ReservationStore[Any] = ReservationStore(db, spec.reservations, domain, clock, hold_seconds)
    servicer = spec.make_servicer(store, domain)
    if metrics is not None:
        metrics.registry.register(holds_gauge(spec.component, store))
    built = build_server(
        [ServiceBinding(spec.full_name, spec.register, servicer)],
        address=address,
        domain=spec.full_name,
        metrics=metrics,
        tracing=tracing,
    )
    if sweep_seconds is not None:
        built.background.append(asyncio.create_task(sweep_forever(store, sweep_seconds)))
    built.background.extend(asyncio.create_task(job) for job in spec.background(engine, clock))
    await built.start()
    return RunningParticipant(
        built=built, db=db, engine=engine, store=store, domain=domain, metrics=metrics, tracing=tracing
    )


async def _serve(spec: ParticipantSpec) -> None:
    settings = ServiceSettings.from_env(spec.component)
    tracing = Tracing.from_env(spec.component)
    kit_logging.configure(spec.component, fmt=settings.log_format, level=settings.log_level, trace_ids=bool(tracing))
    metrics_settings = MetricsSettings.from_env(spec.component, host=settings.host)
    metrics = Metrics(spec.component) if metrics_settings.enabled else None
    # Bound first: a configured metrics port that is taken stops the process before it serves anything.
    metrics_address = metrics.serve_configured(metrics_settings) if metrics is not None else None
    if metrics_address is None:
        metrics = None  # off, or a default port was taken (logged): no metrics at all
    running = await start_participant(
        spec,
        database_url=settings.database_url,
        address=f"{settings.host}:{settings.port}",
        hold_seconds=env_float(spec.component, "hold_seconds", 900.0),
        sweep_seconds=env_float(spec.component, "sweep_seconds", 1.0),
        migrate=env_bool(spec.component, "migrate", True),
        metrics=metrics,
        tracing=tracing,
    )
    log.info(
        "participant_started",
        component=spec.component,
        port=running.port,
        database_url=settings.database_url,
        metrics=metrics_address,
        tracing=tracing is not None,
    )

    await serve_until_signalled(running.built, grace_seconds=settings.grace_seconds, on_stop=running.close)


def run_participant(spec: ParticipantSpec) -> None:
    asyncio.run(_serve(spec))
