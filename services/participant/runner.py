"""Start a participant service: database, schema, seed, store, server, sweeper; one function for all four.

`start_participant` is what tests call (port 0, temporary database); `run_participant` is each
service's `__main__`: it does the same from the environment and serves until signalled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import MetaData, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.kit import logging as kit_logging
from services.kit.clock import Clock, SystemClock
from services.kit.db import create_schema, make_engine
from services.kit.server import BuiltServer, ServiceBinding, build_server, serve_until_signalled
from services.kit.settings import ServiceSettings, env_float
from services.participant.domain import ParticipantDomain
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
    seed: Callable[[AsyncConnection], Awaitable[None]] | None = None
    background: Callable[[AsyncEngine, Clock], list[Coroutine[Any, Any, None]]] = field(
        default=lambda _engine, _clock: []
    )


@dataclass
class RunningParticipant:
    built: BuiltServer
    engine: AsyncEngine
    store: ReservationStore[Any]
    domain: Any

    @property
    def port(self) -> int:
        return self.built.port

    async def stop(self, grace: float | None = None) -> None:
        await self.built.stop(grace)
        await self.engine.dispose()


async def start_participant(
    spec: ParticipantSpec,
    *,
    database_url: str,
    address: str = "127.0.0.1:0",
    clock: Clock | None = None,
    hold_seconds: float = 900.0,
    sweep_seconds: float | None = 1.0,
) -> RunningParticipant:
    clock = clock or SystemClock()
    engine = make_engine(database_url)
    await create_schema(engine, spec.metadata)
    if spec.seed is not None:
        async with engine.begin() as conn:
            await spec.seed(conn)
    domain = spec.make_domain(engine, clock)
    store: ReservationStore[Any] = ReservationStore(engine, spec.reservations, domain, clock, hold_seconds)
    servicer = spec.make_servicer(store, domain)
    built = build_server(
        [ServiceBinding(spec.full_name, spec.register, servicer)], address=address, domain=spec.full_name
    )
    if sweep_seconds is not None:
        built.background.append(asyncio.create_task(sweep_forever(store, sweep_seconds)))
    built.background.extend(asyncio.create_task(job) for job in spec.background(engine, clock))
    await built.start()
    return RunningParticipant(built=built, engine=engine, store=store, domain=domain)


async def _serve(spec: ParticipantSpec) -> None:
    settings = ServiceSettings.from_env(spec.component)
    kit_logging.configure(spec.component, fmt=settings.log_format, level=settings.log_level)
    running = await start_participant(
        spec,
        database_url=settings.database_url,
        address=f"{settings.host}:{settings.port}",
        hold_seconds=env_float(spec.component, "hold_seconds", 900.0),
        sweep_seconds=env_float(spec.component, "sweep_seconds", 1.0),
    )
    log.info("participant_started", component=spec.component, port=running.port, database_url=settings.database_url)
    await serve_until_signalled(running.built, grace_seconds=settings.grace_seconds, on_stop=running.engine.dispose)


def run_participant(spec: ParticipantSpec) -> None:
    asyncio.run(_serve(spec))
