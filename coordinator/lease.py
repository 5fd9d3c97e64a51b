"""Leases with fencing tokens: each trip is driven by one coordinator replica at a time (I8).

Any number of coordinator processes ("replicas") may share one step log (PostgreSQL; SQLite for the
single-process default). A trip's row says which replica drives it (`owner`), until when
(`lease_expires_at`) and under which fencing token (`fence`). The rules:

- A replica owns the trips booked through it: the new trip's INSERT carries owner, token 1 and the
  lease, in the same group-committed transaction as its first intents (no extra statement).
- Every step-log write carries the token its driver holds; the batch writer locks the trip's row and
  refuses a write whose token is not the current one (coordinator/steplog.py). The engine then stops
  driving that trip and logs `stale_write_refused`. Because each participant call's intent is written
  before the call is sent, a refused replica never sends anything for a trip it lost.
- This keeper renews the leases of every trip its engine drives in one UPDATE per interval, not one
  per trip, and scans for unfinished trips whose lease expired (their replica died or stalled),
  claiming a bounded batch with one conditional UPDATE that raises each token by one (PostgreSQL: `FOR
  UPDATE SKIP LOCKED`, so two replicas never claim one trip). Claimed trips go to the engine, which
  drives them on exactly as crash recovery always did: forward after the commit decision, backward
  otherwise, re-sending calls whose outcome is unknown.
- At start a replica takes back at once the trips leased to its own id (its previous life): the id
  defaults to `<hostname>:<port>`, unique among live processes because the port is bound, and stable
  across restarts, so a single coordinator that crashes recovers its trips as soon as it is back,
  without waiting its old leases out (as a DBOS executor recovers the workflows tagged with its id).

Safety rests on the token, never on clocks: a paused replica that wakes after its lease was taken has
every write refused. Clocks matter only for liveness (how soon an expired lease is noticed), so the
lease is measured in wall-clock time of each replica; keep hosts' clocks roughly in sync (NTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Engine as DbEngine
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.engine import Engine
from coordinator.saga import unknown_definition
from coordinator.steplog import StepLogStore
from coordinator.trip import Trip
from services.kit.errors import TransientError

log = structlog.get_logger("tripmesh.lease")


def bound_stalled_transactions(db: AsyncEngine | DbEngine, seconds: float) -> None:
    """On PostgreSQL, have the server end a transaction left idle longer than a lease.

    The batch writer holds its trips' rows locked (FOR UPDATE) until it commits; a replica frozen in
    the middle (SIGSTOP, a VM pause) would otherwise keep them locked, and its trips out of every
    takeover (SKIP LOCKED), for as long as it stays frozen. With this, its transaction is rolled back
    after `seconds`, the others take the trips over, and the frozen replica, on waking, finds its
    connection gone, retries and has the batch refused by the fence check.
    """
    if db.dialect.name != "postgresql":
        return
    millis = max(1000, int(seconds * 1000))

    @event.listens_for(db.sync_engine if isinstance(db, AsyncEngine) else db, "connect")
    def _bound(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET idle_in_transaction_session_timeout = {millis}")
        cursor.close()


def default_replica_id(port: int) -> str:
    """`<hostname>:<port>`: no two live coordinators share it, and a restart on the same port keeps it."""
    return f"{socket.gethostname()}:{port}"


@dataclass(frozen=True)
class LeaseTiming:
    lease_seconds: float = 10.0
    renew_seconds: float = 0.0  # 0: a third of the lease
    takeover_seconds: float = 0.0  # 0: half the lease

    @property
    def renew_every(self) -> float:
        return self.renew_seconds or self.lease_seconds / 3

    @property
    def scan_every(self) -> float:
        return self.takeover_seconds or self.lease_seconds / 2

    def validate(self) -> None:
        if self.lease_seconds <= 0:
            raise ValueError("TRIPMESH_COORDINATOR_LEASE_SECONDS must be positive")
        if self.renew_every >= self.lease_seconds:
            raise ValueError("TRIPMESH_COORDINATOR_LEASE_RENEW_SECONDS must be shorter than the lease")


class LeaseKeeper:
    """Renews this replica's leases and takes over trips whose lease expired; two background loops."""

    def __init__(self, store: StepLogStore, engine: Engine, timing: LeaseTiming, *, budget: int) -> None:
        self.store = store
        self.engine = engine
        self.timing = timing
        self.budget = budget  # at most this many trips driven here before takeover stops claiming
        self._tasks: list[asyncio.Task[None]] = []
        self._reported: set[str] = set()  # trips already logged as definition_unknown

    async def recover(self) -> int:
        """At start: drive this replica id's own unfinished trips, then any whose lease expired."""
        own = await self.store.claim_own()
        self._drive(own)
        taken = await self.takeover_once()
        log.info("leases_recovered", own=len(own), taken_over=taken, replica=self.store.replica_id)
        return len(own) + taken

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(self.timing.renew_every, self.renew_once), name="lease-renew"),
            asyncio.create_task(self._every(self.timing.scan_every, self.takeover_once), name="lease-takeover"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def release(self, trip_ids: list[str]) -> None:
        """On a graceful stop, once the engine stopped: hand back the leases of the trips it still had."""
        if trip_ids and self.store.durable:
            with contextlib.suppress(TransientError):
                await self.store.release(trip_ids)

    async def renew_once(self) -> int:
        """Extend every lease this replica's engine drives (one UPDATE); the trips whose lease was lost."""
        driving = self.engine.driving()
        renewed = await self.store.renew(driving)
        still = set(self.engine.driving())  # a trip that ended meanwhile gave its lease up: not lost
        lost = sorted(t for t in driving if t not in renewed and t in still)
        if lost:
            # Its next write will be refused (the token moved on) and its driver will stop there.
            log.warning("leases_lost", count=len(lost), trip_ids=lost[:10], replica=self.store.replica_id)
        return len(lost)

    async def takeover_once(self) -> int:
        """Claim up to the free budget of trips whose lease expired, and drive them; how many."""
        await self.report_unknown_definitions()
        room = self.budget - self.engine.active
        claimed = await self.store.claim_expired(room)
        for trip in claimed:
            # Driven here under an older token (this process stalled past its own lease): restart it
            # from the step log under the new one; the old driver would only be refused.
            if trip.trip_id in self.engine.driving():
                await self.engine.abandon(trip.trip_id)
        self._drive(claimed)
        if claimed:  # a warning: a replica died or stalled past its leases
            log.warning(
                "trips_taken_over",
                count=len(claimed),
                trip_ids=[t.trip_id for t in claimed[:10]],
                replica=self.store.replica_id,
            )
        return len(claimed)

    async def report_unknown_definitions(self) -> int:
        """Log `definition_unknown` once per unfinished trip this replica will not claim, by version."""
        found = [(t, v) for t, v in await self.store.unknown_definitions() if t not in self._reported]
        by_version: dict[int, list[str]] = {}
        for trip_id, version in found:
            by_version.setdefault(version, []).append(trip_id)
            self._reported.add(trip_id)
        for version, trip_ids in sorted(by_version.items()):
            log.warning(
                "definition_unknown",
                definition_version=version,
                count=len(trip_ids),
                trip_ids=trip_ids[:10],
                detail=unknown_definition(version, self.engine.sagas),
            )
        return len(found)

    def _drive(self, trips: list[Trip]) -> None:
        for trip in trips:
            self.engine.start(trip)

    @staticmethod
    async def _every(seconds: float, work: Callable[[], Awaitable[int]]) -> None:
        """Run `work` every `seconds` (with 10 % jitter, so replicas drift apart); survive its errors."""
        while True:
            await asyncio.sleep(seconds * random.uniform(0.9, 1.1))
            try:
                await work()
            except Exception:  # a step log down for a while: try again next tick
                log.exception("lease_work_failed", work=work.__name__)
