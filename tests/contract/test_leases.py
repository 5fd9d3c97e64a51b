"""Leases and fencing tokens on the real step log, on SQLite and on PostgreSQL (coordinator/lease.py).

Two or three StepLogStores on one database play the replicas. Each test reads the database itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.audit import lease_problems
from coordinator.engine import Engine, RetryPolicy
from coordinator.participants import Outcome, OutcomeKind
from coordinator.saga import TRIP_SAGA
from coordinator.steplog import StepLogStore, new_trip, state_write, step_write
from coordinator.trip import FlightPart, Step, StepStatus, Trip, TripRequest, TripState
from coordinator.writer import StaleLeaseError
from services.kit.clock import SystemClock
from services.kit.db import make_engine
from services.kit.migrate import migrate
from tests.support.pg_scratch import scratch_database

pytestmark = pytest.mark.contract


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite+aiosqlite:///{tmp_path}/coordinator.db")
        await migrate(engine, "coordinator")
        yield engine
        await engine.dispose()
        return
    async with scratch_database() as url:
        engine = make_engine(url)
        await migrate(engine, "coordinator")
        yield engine
        await engine.dispose()


@pytest.fixture
async def replicas(db: AsyncEngine) -> AsyncIterator[Callable[..., StepLogStore]]:
    made: list[StepLogStore] = []

    def replica(name: str, lease_seconds: float = 10.0) -> StepLogStore:
        store = StepLogStore(db, replica_id=name, lease_seconds=lease_seconds)
        made.append(store)
        return store

    yield replica
    for store in made:
        await store.close()


def a_trip(trip_id: str) -> Trip:
    now = datetime.now(UTC)
    request = TripRequest(
        trip_id=trip_id,
        customer_id="cust-ada",
        email="ada@example.com",
        name="Ada",
        flight=FlightPart("TM101-20270315", "", 1, 1),
        hotel=None,
        payment_method_id="pm_ada_visa",
        currency="EUR",
    )
    return Trip(request, TripState.RESERVING, now, now, now + timedelta(minutes=5), 1, fence=1)


def a_step(name: str = "flight.reserve") -> Step:
    return Step(name, 1, StepStatus.STARTED, 1, datetime.now(UTC))


async def rows(db: AsyncEngine, sql: str) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(text(sql))).all())


async def test_a_takeover_raises_the_token_and_the_old_holders_writes_are_refused(
    db: AsyncEngine, replicas: Callable[..., StepLogStore]
) -> None:
    a, b = replicas("replica-a", lease_seconds=0.2), replicas("replica-b")
    trip = a_trip("t-taken")
    assert await a.flush([new_trip(trip), step_write(trip, a_step())])
    assert await b.claim_expired(10) == []  # a's lease is live
    await asyncio.sleep(0.3)

    [taken] = await b.claim_expired(10)
    assert (taken.trip_id, taken.owner, taken.fence) == ("t-taken", "replica-b", 2)
    with pytest.raises(StaleLeaseError) as refused:
        await a.flush([step_write(trip, a_step("flight.confirm"))])
    assert (refused.value.stale, refused.value.current.fence, refused.value.current.owner) == (1, 2, "replica-b")
    trip.state = TripState.CANCELLED
    with pytest.raises(StaleLeaseError):
        await a.flush([state_write(trip)])
    assert await b.flush([step_write(taken, a_step("flight.cancel"))])

    assert await rows(db, "SELECT name, fence, owner FROM steps ORDER BY name") == [
        ("flight.cancel", 2, "replica-b"),
        ("flight.reserve", 1, "replica-a"),
    ]  # no flight.confirm: refused
    assert await rows(db, "SELECT state, owner, fence FROM trips") == [("RESERVING", "replica-b", 2)]
    assert await rows(db, "SELECT fence, owner, reason FROM trip_leases ORDER BY fence") == [
        (1, "replica-a", "new"),
        (2, "replica-b", "takeover"),
    ]
    assert await lease_problems(db) == []


async def test_a_live_lease_is_renewed_by_its_owner_only_and_never_taken(
    db: AsyncEngine, replicas: Callable[..., StepLogStore]
) -> None:
    a, b = replicas("replica-a", lease_seconds=0.5), replicas("replica-b")
    trip = a_trip("t-live")
    assert await a.flush([new_trip(trip)])
    for _ in range(3):
        await asyncio.sleep(0.25)
        assert await a.renew(["t-live"]) == {"t-live"}
        assert await b.renew(["t-live"]) == set()
        assert await b.claim_one("t-live") is None
        assert await b.claim_expired(10) == []
    trip.state = TripState.CONFIRMED
    assert await a.flush([state_write(trip)])  # terminal: the lease ends
    assert await rows(db, "SELECT lease_expires_at FROM trips") == [(None,)]
    await asyncio.sleep(0.6)
    assert await b.claim_expired(10) == []  # a finished trip is never taken over


async def test_replicas_claiming_at_once_never_claim_the_same_trip(
    db: AsyncEngine, replicas: Callable[..., StepLogStore]
) -> None:
    dead = replicas("replica-dead", lease_seconds=0.1)
    ids = [f"t-{i:03d}" for i in range(60)]
    assert all(await asyncio.gather(*(dead.flush([new_trip(a_trip(i))]) for i in ids)))
    await asyncio.sleep(0.2)
    b, c = replicas("replica-b"), replicas("replica-c")
    rounds = await asyncio.gather(*(store.claim_expired(25) for store in (b, c, b, c)))
    claimed = [t.trip_id for batch in rounds for t in batch]
    assert len(claimed) == len(set(claimed)) == len(ids)
    assert all(len(batch) <= 25 for batch in rounds)
    assert await rows(db, "SELECT COUNT(*) FROM trip_leases WHERE fence = 2") == [(60,)]
    assert await lease_problems(db) == []


class RecordingParticipants:
    """Counts the calls an engine sends: here, a refused intent must mean no call at all."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def call(self, name: str, request: Any, trip_id: str) -> Outcome:
        self.calls.append(name)
        return Outcome(OutcomeKind.OK, result={"price_minor": 100})


async def test_an_engine_whose_intent_is_refused_stops_and_sends_nothing(
    replicas: Callable[..., StepLogStore],
) -> None:
    a, b = replicas("replica-a", lease_seconds=0.1), replicas("replica-b")
    trip = a_trip("t-paused")
    assert await a.flush([new_trip(trip)])
    await asyncio.sleep(0.2)
    assert [t.fence for t in await b.claim_expired(10)] == [2]  # replica-a "woke up" too late

    participants = RecordingParticipants()
    engine = Engine(TRIP_SAGA, a, participants, SystemClock(), RetryPolicy())  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        engine.start(trip)
        await engine.wait("t-paused", 5.0)
    assert participants.calls == []
    assert engine.driving() == []
    refused = [line for line in logs if line["event"] == "stale_write_refused"]
    assert len(refused) == 1, logs
    assert refused[0] | {"replica": "replica-a", "stale_token": 1, "current_token": 2} == refused[0]


async def test_a_graceful_stop_hands_its_leases_over_at_once(replicas: Callable[..., StepLogStore]) -> None:
    a, b = replicas("replica-a"), replicas("replica-b")
    assert await a.flush([new_trip(a_trip("t-handed")), new_trip(a_trip("t-kept"))])
    await a.release(["t-handed"])
    assert [(t.trip_id, t.owner, t.fence) for t in await b.claim_expired(10)] == [("t-handed", "replica-b", 2)]


async def test_a_restarted_replica_takes_its_own_trips_back_without_waiting(
    replicas: Callable[..., StepLogStore],
) -> None:
    before, other = replicas("host:50050"), replicas("replica-b")
    assert await before.flush([new_trip(a_trip("t-mine"))])
    after = replicas("host:50050")  # the same address, a new process: its leases are still live
    assert await other.claim_expired(10) == []
    [back] = await after.claim_own()
    assert (back.trip_id, back.fence) == ("t-mine", 2)
    with pytest.raises(StaleLeaseError):  # a straggler of the previous process is fenced off
        await before.flush([step_write(a_trip("t-mine"), a_step())])


async def test_a_batch_writes_each_trips_latest_state_whatever_else_it_holds(
    db: AsyncEngine, replicas: Callable[..., StepLogStore]
) -> None:
    """One group commit may carry two state writes of one trip (a transition waiting in `pending`, then
    the terminal one) beside other trips' of other shapes: the trip ends in its latest state. (Seen in
    the demo: a REVERTED change left CHANGE_REVERTING in the step log when updates were grouped by shape.)"""
    store = replicas("replica-a")
    first, second = a_trip("t-first"), a_trip("t-second")
    assert await store.flush([new_trip(first), new_trip(second)])
    first.state = TripState.CONFIRMED  # terminal: its lease ends, a write of another shape
    second.state = TripState.CONFIRMING
    early = state_write(second)
    second.state = TripState.CONFIRMED
    assert await store.flush([state_write(first), early, state_write(second)])
    states = dict(await rows(db, "SELECT trip_id, state FROM trips ORDER BY trip_id"))
    assert states == {"t-first": "CONFIRMED", "t-second": "CONFIRMED"}
