"""Assemble and start the coordinator: step log, participants' clients, engine, server, recovery."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.crashpoints import CrashPoints
from coordinator.engine import Engine
from coordinator.events import TripEvents
from coordinator.lease import LeaseKeeper, bound_stalled_transactions, default_replica_id
from coordinator.participants import Participants
from coordinator.saga import TRIP_SAGA
from coordinator.service import TripService
from coordinator.servicer import TripCoordinatorServicer
from coordinator.settings import CoordinatorSettings
from coordinator.steplog import StepLogStore
from services.kit.clock import Clock, SystemClock
from services.kit.db import make_engine
from services.kit.metrics import Metrics
from services.kit.migrate import prepare
from services.kit.server import BuiltServer, ServiceBinding, build_server
from services.kit.tracing import Tracing, shut_down
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

log = structlog.get_logger("tripmesh.coordinator")

SERVICE_NAME = trip_pb.DESCRIPTOR.services_by_name["TripCoordinator"].full_name


@dataclass
class RunningCoordinator:
    built: BuiltServer
    db: AsyncEngine
    engine: Engine
    store: StepLogStore
    participants: Participants
    service: TripService
    leases: LeaseKeeper
    metrics: Metrics | None = None
    tracing: Tracing | None = None

    @property
    def port(self) -> int:
        return self.built.port

    async def stop(self, grace: float | None = None) -> None:
        await self.built.stop(grace)
        await self.close(grace or 0.0)

    async def close(self, grace: float) -> None:
        """Everything but the server: the trips being driven, the step log, the clients, metrics, spans."""
        await self.leases.stop()
        held = self.engine.driving()
        await self.engine.stop(grace)
        await self.leases.release(held)  # what it did not finish, the other replicas take at once
        await self.store.close()
        await self.participants.close()
        await self.db.dispose()
        await shut_down(self.metrics, self.tracing)


async def start_coordinator(
    settings: CoordinatorSettings,
    *,
    address: str | None = None,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
) -> RunningCoordinator:
    """`metrics` (served or not, the caller's choice) gets the coordinator's metrics; `tracing` its spans."""
    clock = clock or SystemClock()
    db = make_engine(settings.service.database_url)
    bound_stalled_transactions(db, settings.lease.lease_seconds)
    try:
        await prepare(db, "coordinator", migrate_on_start=settings.migrate)
    except BaseException:
        await db.dispose()
        raise
    if settings.step_log not in ("on", "off"):
        raise ValueError(f"TRIPMESH_COORDINATOR_STEP_LOG must be 'on' or 'off', got {settings.step_log!r}")
    settings.lease.validate()
    store = StepLogStore(db, durable=settings.step_log == "on", lease_seconds=settings.lease.lease_seconds)
    bound_stalled_transactions(store.writer.engine, settings.lease.lease_seconds)
    if not store.durable:
        log.warning("step_log_off", detail="nothing is durable: a benchmark limit, not a way to run tripmesh")
    participants = Participants(
        settings.addresses,
        call_timeout=settings.call_timeout,
        interceptors=tracing.client_interceptors() if tracing is not None else (),
    )
    events = TripEvents(clock)
    if tracing is not None:
        from coordinator.tracing import TripSpans  # imports OpenTelemetry: only when tracing is on

        events.spans = TripSpans(tracing.tracer("tripmesh.coordinator"))
    engine = Engine(
        TRIP_SAGA,  # new trips start under it; trips of the older definitions in SAGAS are driven by theirs
        store,
        participants,
        clock,
        settings.policy,
        CrashPoints.from_env(),
        max_active=settings.max_active_trips,
        events=events,
    )
    store.versions = sorted(engine.sagas)  # never lease a trip of a definition this build cannot drive
    if metrics is not None:
        from coordinator.metrics import install

        events.add(install(metrics, store, lambda: engine.active))
    service = TripService(
        TRIP_SAGA,
        store,
        engine,
        clock,
        trip_timeout=settings.trip_timeout,
        book_wait=settings.book_wait,
        max_pending=settings.max_pending_trips,
    )
    servicer = TripCoordinatorServicer(service)
    built = build_server(
        [ServiceBinding(SERVICE_NAME, trip_grpc.add_TripCoordinatorServicer_to_server, servicer)],
        address=address or f"{settings.service.host}:{settings.service.port}",
        domain=SERVICE_NAME,
        metrics=metrics,
        tracing=tracing,
    )
    store.replica_id = settings.replica_id or default_replica_id(built.port)  # the port is bound by now
    leases = LeaseKeeper(store, engine, settings.lease, budget=settings.max_active_trips)
    await built.start()
    recovered = await leases.recover() if store.durable else 0
    if store.durable:
        leases.start()
    log.info(
        "coordinator_started",
        port=built.port,
        replica=store.replica_id,
        recovered_trips=recovered,
        database_url=settings.service.database_url,
    )
    return RunningCoordinator(
        built=built,
        db=db,
        engine=engine,
        store=store,
        participants=participants,
        service=service,
        leases=leases,
        metrics=metrics,
        tracing=tracing,
    )
