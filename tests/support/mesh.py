"""The whole mesh in one test process: four participants, an SMTP sink and the coordinator.

Each piece is the real server on port 0 with its own database (a SQLite file under the test's tmp
dir, or a PostgreSQL database: tests/support/databases.py); the coordinator reaches the participants
over real gRPC on loopback.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.app import RunningCoordinator, start_coordinator
from coordinator.engine import RetryPolicy
from coordinator.participants import Addresses
from coordinator.settings import CoordinatorSettings
from services.car.app import SPEC as CAR
from services.flight.app import SPEC as FLIGHT
from services.hotel.app import SPEC as HOTEL
from services.kit.metrics import Metrics
from services.kit.settings import ServiceSettings
from services.kit.tracing import Tracing
from services.notify.servicer import SPEC as NOTIFY
from services.notify.smtp_sink import RunningSink, start_sink
from services.participant.runner import RunningParticipant, start_participant
from services.payment.servicer import SPEC as PAYMENT
from tests.support.databases import Databases
from tests.support.invariants import check_invariants
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

SPECS = {"flight": FLIGHT, "hotel": HOTEL, "payment": PAYMENT, "notify": NOTIFY, "car": CAR}

FAST_POLICY = RetryPolicy(
    reserve_attempts=3, confirm_attempts=5, cancel_attempts=5, initial_backoff=0.01, max_backoff=0.05
)


@dataclass
class Mesh:
    participants: dict[str, RunningParticipant]
    coordinator: RunningCoordinator
    sink: RunningSink
    mail_dir: Path
    channel: grpc.aio.Channel
    with_metrics: bool = False
    tracing: Callable[[str], Tracing] | None = None
    metrics_ports: dict[str, int] = field(default_factory=dict)  # component -> its /metrics port

    @property
    def stub(self) -> trip_grpc.TripCoordinatorStub:
        return trip_grpc.TripCoordinatorStub(self.channel)

    @property
    def engines(self) -> Mapping[str, AsyncEngine]:
        return {name: p.engine for name, p in self.participants.items()}

    async def invariants(self) -> list[str]:
        return await check_invariants(self.coordinator.db, self.engines)

    async def restart_participant(self, name: str, *, hold_seconds: float = 900.0) -> None:
        """Stop a participant and start it again on the same port and database (with the env as it is now)."""
        old = self.participants[name]
        await old.stop(0)
        self.participants[name] = await start_participant(
            SPECS[name],
            database_url=old.engine.url.render_as_string(hide_password=False),
            address=f"127.0.0.1:{old.port}",
            hold_seconds=hold_seconds,
            **_observed(name, self.with_metrics, self.tracing, self.metrics_ports),
        )

    async def stop(self) -> None:
        await self.channel.close()
        await self.coordinator.stop(0)
        for participant in self.participants.values():
            await participant.stop(0)
        await self.sink.stop()


async def start_mesh(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    policy: RetryPolicy = FAST_POLICY,
    hold_seconds: float = 900.0,
    call_timeout: float = 5.0,
    metrics: bool = False,
    tracing: Callable[[str], Tracing] | None = None,
    databases: Databases | None = None,
    step_log: str = "on",
) -> Mesh:
    """`metrics`: every component serves its own /metrics on a free port (`Mesh.metrics_ports`);
    `tracing`: each component's Tracing, made by this factory from the component's name;
    `databases`: where the five databases are (default: SQLite files in tmp_path)."""
    databases = databases or Databases("sqlite", tmp_path)
    ports: dict[str, int] = {}
    mail_dir = tmp_path / "mail"
    sink = await start_sink(port=0, directory=mail_dir)
    monkeypatch.setenv("TRIPMESH_NOTIFY_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("TRIPMESH_NOTIFY_SMTP_PORT", str(sink.port))
    monkeypatch.setenv("TRIPMESH_NOTIFY_OUTBOX_INTERVAL_SECONDS", "0.05")
    participants = {
        name: await start_participant(
            spec,
            database_url=databases.url(name),
            hold_seconds=hold_seconds,
            **_observed(name, metrics, tracing, ports),
        )
        for name, spec in SPECS.items()
    }
    settings = CoordinatorSettings(
        service=dataclasses.replace(
            ServiceSettings.from_env("coordinator"),
            database_url=databases.url("coordinator"),
        ),
        addresses=Addresses(**{name: f"127.0.0.1:{p.port}" for name, p in participants.items()}),
        call_timeout=call_timeout,
        trip_timeout=60.0,
        book_wait=30.0,
        policy=policy,
        step_log=step_log,
    )
    coordinator = await start_coordinator(
        settings, address="127.0.0.1:0", **_observed("coordinator", metrics, tracing, ports)
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{coordinator.port}")
    return Mesh(participants, coordinator, sink, mail_dir, channel, metrics, tracing, ports)


def _observed(
    name: str, metrics: bool, tracing: Callable[[str], Tracing] | None, ports: dict[str, int]
) -> dict[str, Metrics | Tracing | None]:
    """The metrics (served on a free port, recorded in `ports`) and tracing one component starts with."""
    served = None
    if metrics:
        served = Metrics(name, process=False)
        ports[name] = served.serve("127.0.0.1", 0)
    return {"metrics": served, "tracing": tracing(name) if tracing is not None else None}


@contextlib.asynccontextmanager
async def audited_mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: Any) -> AsyncIterator[Mesh]:
    """start_mesh(**options) for one test; after it, every database must hold the invariants (I1-I8)."""
    running = await start_mesh(tmp_path, monkeypatch, **options)
    try:
        yield running
        assert await running.invariants() == []
    finally:
        await running.stop()
