"""Three coordinator replicas on one PostgreSQL step log: one SIGKILLed, one SIGSTOPped past its leases.

The four participants and the SMTP sink run as real processes (SQLite each); three coordinator
processes share a scratch PostgreSQL database with 2-second leases. Clients book 300 trips spread over
the replicas (a tenth with a declined card, so compensations run too), each resending the same
BookTrip to the next replica when its own does not answer. Mid-run replica 1 is SIGKILLed; later
replica 2 is SIGSTOPped for longer than its leases, then SIGCONTed.

Then, from the databases and the logs: every trip in the step log is terminal, one row each (I1);
I1-I8 hold (coordinator/audit.py, with I8 from the lease grants); each money movement happened at most
once per reservation (I7, payment ledger); the dead replica's trips were taken over and ended; and the
woken replica logged `stale_write_refused` for trips another replica had taken, the database agreeing
on who held which token. The takeover times are printed (and in the chaos report).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.db import make_engine
from tests.support.chaos import (
    PARTICIPANTS,
    REPORT,
    ProcessMesh,
    ledger_counts,
    ledger_problems,
    readonly_engine,
    trip_request,
)
from tests.support.invariants import check_invariants
from tests.support.pg_scratch import scratch_database
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

TRIPS = 300
REPLICAS = ("coordinator#1", "coordinator#2", "coordinator#3")
LEASE = 2.0
PAUSE = 2.5 * LEASE  # replica 2 sleeps past its leases and a takeover scan or two
CLIENTS_PER_REPLICA = 6
KILL_AFTER, STOP_AFTER = 80, 150  # answered trips before the kill and before the pause
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
UNFINISHED = "SELECT trip_id FROM trips WHERE state NOT IN ('CONFIRMED', 'CANCELLED', 'NEEDS_ATTENTION')"
FIRST_GRANTS = "SELECT trip_id FROM trip_leases WHERE fence = 1 AND owner = :owner"


def replica_id(name: str) -> str:
    return f"r{name.rpartition('#')[2]}"


def coordinator_env(url: str) -> dict[str, dict[str, str]]:
    common = {
        "TRIPMESH_COORDINATOR_DATABASE_URL": url,
        "TRIPMESH_COORDINATOR_LEASE_SECONDS": str(LEASE),
        "TRIPMESH_COORDINATOR_CALL_TIMEOUT_SECONDS": "3",
        "TRIPMESH_COORDINATOR_BOOK_WAIT_SECONDS": "10",
        "TRIPMESH_COORDINATOR_INITIAL_BACKOFF_SECONDS": "0.02",
        "TRIPMESH_COORDINATOR_MAX_BACKOFF_SECONDS": "0.2",
        "TRIPMESH_COORDINATOR_GRACE_SECONDS": "1",
        "TRIPMESH_LOG_FORMAT": "json",
    }
    env = {"coordinator": common}
    env.update({name: {"TRIPMESH_COORDINATOR_REPLICA_ID": replica_id(name)} for name in REPLICAS})
    return env


def plan(index: int) -> Any:
    """One night in Lisbon, spread over 56 days and two hotels: never sold out (20 rooms a night)."""
    first = date(2027, 3, 1) + timedelta(days=index % 56)
    last = first + timedelta(days=1)
    options: dict[str, Any] = {
        "outbound": f"TM101-{first:%Y%m%d}",
        "inbound": f"TM102-{last:%Y%m%d}",
        "check_in": (first.year, first.month, first.day),
        "check_out": (last.year, last.month, last.day),
        "hotel_id": ("lis-alfama", "lis-chiado")[index % 2],
    }
    if index % 10 == 7:
        options.update(customer_id="cust-ada", payment_method_id="pm_ada_declined")
    return trip_request(f"takeover-{index:04d}", **options)


class Run:
    def __init__(self, mesh: ProcessMesh) -> None:
        self.mesh = mesh
        self.answered = 0
        self.milestones = {KILL_AFTER: asyncio.Event(), STOP_AFTER: asyncio.Event()}
        self.unanswered: list[str] = []
        self.events: dict[str, float] = {}
        self.killed_at: datetime | None = None

    async def client(self, index: int, stubs: list[trip_grpc.TripCoordinatorStub], gate: asyncio.Semaphore) -> None:
        """Book on the home replica; on no answer, resend the same trip to the next one (idempotent)."""
        request = plan(index)
        async with gate:
            for attempt in range(12):
                stub = stubs[(index + attempt) % len(stubs)]
                try:
                    await stub.BookTrip(request, timeout=8.0)
                except grpc.aio.AioRpcError as error:
                    if error.code() not in RETRYABLE:
                        raise AssertionError(f"{request.trip_id}: {error.code().name} {error.details()}") from error
                    await asyncio.sleep(0.1)
                    continue
                self.answered += 1
                if self.answered in self.milestones:
                    self.milestones[self.answered].set()
                return
        self.unanswered.append(request.trip_id)

    async def monkey(self) -> None:
        await self.milestones[KILL_AFTER].wait()
        self.killed_at = datetime.now(UTC)
        self.events["kill"] = time.monotonic()
        self.mesh.kill(REPLICAS[0])
        await self.milestones[STOP_AFTER].wait()
        paused = self.mesh.procs[REPLICAS[1]].popen
        paused.send_signal(signal.SIGSTOP)
        self.events["stop"] = time.monotonic()
        try:
            await asyncio.sleep(PAUSE)
        finally:
            paused.send_signal(signal.SIGCONT)
        self.events["cont"] = time.monotonic()


async def fetch(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[ProcessMesh]:
    with ProcessMesh(tmp_path, log_level="warning") as running:
        try:
            yield running
        finally:  # a stopped process would sit out the SIGTERM grace: wake it first
            proc = running.procs.get(REPLICAS[1])
            if proc is not None and proc.running():
                proc.popen.send_signal(signal.SIGCONT)


async def test_replicas_take_over_a_killed_and_a_paused_replica(mesh: ProcessMesh) -> None:
    began = time.monotonic()
    async with scratch_database("tm_lease_takeover") as url:
        mesh.env.update(coordinator_env(url))
        mesh.start_participants()
        mesh.start(REPLICAS[0], timeout=60.0)  # creates the schema; the others find it there
        for name in REPLICAS[1:]:
            mesh.start(name, wait=False)
        for name in REPLICAS[1:]:
            mesh.procs[name].wait_ready(60.0)
        step_log = make_engine(url)
        run = Run(mesh)
        channels = [grpc.aio.insecure_channel(mesh.address(name)) for name in REPLICAS]
        try:
            stubs = [trip_grpc.TripCoordinatorStub(channel) for channel in channels]
            gates = [asyncio.Semaphore(CLIENTS_PER_REPLICA) for _ in REPLICAS]
            booked = time.monotonic()
            await asyncio.wait_for(
                asyncio.gather(run.monkey(), *(run.client(i, stubs, gates[i % 3]) for i in range(TRIPS))), 120
            )
            booked = time.monotonic() - booked

            # The dead replica's trips: first granted to r1. Wait until every trip is terminal.
            dead = {r.trip_id for r in await fetch(step_log, FIRST_GRANTS, owner="r1")}
            deadline = time.monotonic() + 60
            while unfinished := await fetch(step_log, UNFINISHED):
                assert time.monotonic() < deadline, f"still unfinished: {[r.trip_id for r in unfinished][:20]}"
                await asyncio.sleep(0.2)
        finally:
            for channel in channels:
                await channel.close()
            for name in REPLICAS:  # before their database is dropped under them
                mesh.procs[name].stop(grace=5.0)

        # --- what the databases say -----------------------------------------------------------------
        trips = await fetch(step_log, "SELECT trip_id, state, owner, fence, updated_at FROM trips")
        grants = await fetch(step_log, "SELECT trip_id, fence, owner, acquired_at, reason FROM trip_leases")
        assert not run.unanswered, f"never answered on any replica: {run.unanswered}"
        assert len(trips) == len({t.trip_id for t in trips}) == TRIPS  # one row per trip, each booked once
        assert {t.state for t in trips} <= {"CONFIRMED", "CANCELLED"}, {t.trip_id: t.state for t in trips}
        declined = {t.trip_id for t in trips if int(t.trip_id.rsplit("-", 1)[1]) % 10 == 7}
        assert {t.trip_id for t in trips if t.state == "CANCELLED"} == declined

        participants = {name: readonly_engine(mesh.db_path(name)) for name in PARTICIPANTS}
        try:
            violations = await check_invariants(step_log, participants)
            ledger = await ledger_counts(participants["payment"])
        finally:
            for engine in participants.values():
                await engine.dispose()
        assert violations == [], violations
        assert ledger_problems(ledger) == []

        # --- the killed replica: its trips were taken over and ended ---------------------------------
        assert dead, "replica 1 had accepted no trip before it was killed"
        takeovers = [g for g in grants if g.trip_id in dead and g.reason == "takeover" and g.owner != "r1"]
        assert takeovers, "no trip of the killed replica was in flight, so none was taken over"
        assert run.killed_at is not None
        after_kill = sorted(g.acquired_at for g in takeovers if g.acquired_at > run.killed_at)
        taken_dead = {g.trip_id for g in takeovers}
        ended_dead = max(t.updated_at for t in trips if t.trip_id in taken_dead) if taken_dead else None

        # --- the paused replica: stale writes refused, and the database agrees --------------------------
        refused = log_events(mesh.procs[REPLICAS[1]].log_path, "stale_write_refused")
        assert refused, "replica 2 woke after its leases were taken but logged no stale_write_refused"
        holders = {(g.trip_id, g.fence): g.owner for g in grants}
        for line in refused:
            assert line["replica"] == "r2"
            assert line["stale_token"] < line["current_token"], line
            assert holders[(line["trip_id"], line["stale_token"])] == "r2", line
            assert holders[(line["trip_id"], line["current_token"])] == line["current_owner"] != "r2", line
        taken_from_paused = [
            g for g in grants if g.reason == "takeover" and holders.get((g.trip_id, g.fence - 1)) == "r2"
        ]

        first = (after_kill[0] - run.killed_at).total_seconds() if after_kill else float("nan")
        all_done = (ended_dead - run.killed_at).total_seconds() if ended_dead else float("nan")
        summary = (
            f"takeover: {TRIPS} trips over 3 replicas in {booked:.1f} s; lease {LEASE:.0f} s; replica 1 killed "
            f"with {len(dead)} trips accepted, {len(taken_dead)} taken over: first {first:.2f} s after the kill, "
            f"all terminal {all_done:.2f} s after it; replica 2 paused {PAUSE:.0f} s: {len(taken_from_paused)} "
            f"trips taken from it, {len(refused)} stale writes refused on waking; whole test "
            f"{time.monotonic() - began:.0f} s"
        )
        print(summary)
        REPORT.append(summary)
        await step_log.dispose()
