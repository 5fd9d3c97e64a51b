"""The participant contract (ARCHITECTURE.md, P1-P8), run against every domain service.

Each test starts the real service in-process (`start_participant`: real aio server on port 0, real
SQLite file, the service's own seed) and calls it through its generated stub. Every test also reads
the service's database directly: the reservations table, a snapshot of every table (a refused or
repeated call must change nothing), and the case's conservation check, which must find nothing wrong
when the test ends.

A service takes part by providing tests/support/cases/<name>.py with `CASE: ParticipantCase`; a
missing case module fails its tests rather than skipping them.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy import Table, func, select

from services.kit.clock import FakeClock
from services.kit.interceptors import TRIP_ID_METADATA
from services.participant.runner import RunningParticipant, start_participant
from tests.support.databases import Databases
from tests.support.participant_case import ParticipantCase
from tripmesh.v1 import common_pb2 as common_pb

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]

CASE_NAMES = ("flight", "hotel", "payment", "notify", "car")
CALL_TIMEOUT = 10.0
MAX_CONCURRENT = 60  # P6 fires 3 x capacity concurrent Reserves, at most this many
MAX_FILL = 30  # P5 fills a scarce resource to the brim only when its capacity is at most this
HOLD_SECONDS = 60.0

HELD = common_pb.RESERVATION_STATUS_HELD
CONFIRMED = common_pb.RESERVATION_STATUS_CONFIRMED
CANCELLED = common_pb.RESERVATION_STATUS_CANCELLED
EXPIRED = common_pb.RESERVATION_STATUS_EXPIRED

# The codes a Reserve may be refused with for want of capacity or credit (P6, P8).
CAPACITY_REFUSALS = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION}

Snapshot = dict[str, list[tuple[Any, ...]]]


def load_case(name: str) -> ParticipantCase:
    module_name = f"tests.support.cases.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        module = None
    if module is None:
        pytest.fail(f"tests/support/cases/{name}.py is missing: every participant must provide its CASE", False)
    case = module.CASE
    assert isinstance(case, ParticipantCase)
    assert case.name == name, f"{module_name}.CASE is named {case.name!r}"
    return case


@dataclass
class Service:
    """One running participant, its client stub, its clock and direct access to its database."""

    case: ParticipantCase
    running: RunningParticipant
    channel: grpc.aio.Channel
    stub: Any
    clock: FakeClock

    @property
    def full_name(self) -> str:
        return self.case.spec.full_name

    @property
    def reservations(self) -> Table:
        return self.case.spec.reservations

    # --- calls --------------------------------------------------------------------------------------

    async def reserve(self, reservation_id: str, request: Any = None, **kwargs: Any) -> Any:
        message = self.case.reserve_request(reservation_id) if request is None else request
        return await self.stub.Reserve(message, timeout=CALL_TIMEOUT, **kwargs)

    async def confirm(self, reservation_id: str, **kwargs: Any) -> Any:
        return await self.stub.Confirm(self.case.confirm_request(reservation_id), timeout=CALL_TIMEOUT, **kwargs)

    async def cancel(self, reservation_id: str) -> Any:
        return await self.stub.Cancel(self.case.cancel_request(reservation_id), timeout=CALL_TIMEOUT)

    async def get(self, reservation_id: str) -> common_pb.Reservation:
        response = await self.stub.GetReservation(self.case.get_request(reservation_id), timeout=CALL_TIMEOUT)
        reservation: common_pb.Reservation = response.reservation
        return reservation

    # --- the database, read directly -----------------------------------------------------------------

    async def row(self, reservation_id: str) -> dict[str, Any] | None:
        table = self.reservations
        async with self.running.engine.connect() as conn:
            found = (await conn.execute(select(table).where(table.c.reservation_id == reservation_id))).first()
        return None if found is None else dict(found._mapping)

    async def count(self, status: str | None = None) -> int:
        table = self.reservations
        query = select(func.count()).select_from(table)
        if status is not None:
            query = query.where(table.c.status == status)
        async with self.running.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def snapshot(self, *, domain_only: bool = False) -> Snapshot:
        """Every row of every table the service declares (domain_only: all but the reservations)."""
        tables: dict[str, list[tuple[Any, ...]]] = {}
        async with self.running.engine.connect() as conn:
            for table in self.case.spec.metadata.sorted_tables:
                if domain_only and table.name == self.reservations.name:
                    continue
                order = list(table.primary_key.columns) or list(table.columns)
                rows = await conn.execute(select(table).order_by(*order))
                tables[table.name] = [tuple(row) for row in rows]
        return tables

    async def assert_conserved(self) -> None:
        violations = await self.case.check_conservation(self.running.engine)
        assert violations == [], f"{self.case.name} breaks conservation: {violations}"

    async def close(self) -> list[str]:
        try:
            return await self.case.check_conservation(self.running.engine)
        finally:
            await self.channel.close()
            await self.running.stop(None)


Launch = Callable[..., Awaitable[Service]]


@pytest.fixture(params=CASE_NAMES)
def case_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def launch(case_name: str, databases: Databases) -> AsyncIterator[Launch]:
    """Starts the case's service (inside the test, so a missing case fails the test); stops it after."""
    started: list[Service] = []

    async def start(
        *, hold_seconds: float = 900.0, sweep_seconds: float | None = None, background: bool = False
    ) -> Service:
        case = load_case(case_name)
        clock = FakeClock()
        # A service's own background jobs (notify's outbox dispatcher) write to its database on their
        # own schedule, which would race the snapshots; they run in one dedicated test below.
        spec = case.spec if background else replace(case.spec, background=lambda _engine, _clock: [])
        running = await start_participant(
            spec,
            database_url=databases.url(case.name),
            clock=clock,
            hold_seconds=hold_seconds,
            sweep_seconds=sweep_seconds,
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        service = Service(case, running, channel, case.stub(channel), clock)
        started.append(service)
        return service

    yield start
    violations = [v for service in started for v in await service.close()]
    assert violations == [], f"conservation broken at the end of the test: {violations}"


# --- helpers ----------------------------------------------------------------------------------------


async def rejected(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return error
    pytest.fail(f"expected the call to be refused, it answered {response}")


def details_of(error: grpc.aio.AioRpcError, kind: Any) -> list[Any]:
    status = rpc_status.from_call(error)
    if status is None:
        return []
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


def assert_refusal(
    error: grpc.aio.AioRpcError, code: grpc.StatusCode | set[grpc.StatusCode], reason: str | None, domain: str
) -> error_details_pb2.ErrorInfo:
    codes = code if isinstance(code, set) else {code}
    assert error.code() in codes, f"expected {sorted(c.name for c in codes)}, got {error.code()}: {error.details()}"
    assert error.details(), "a refusal must say why"
    infos = details_of(error, error_details_pb2.ErrorInfo)
    assert len(infos) == 1, f"expected one ErrorInfo, got {infos}"
    info: error_details_pb2.ErrorInfo = infos[0]
    if reason is not None:
        assert info.reason == reason, f"{error.code()}: {error.details()}"
    assert info.reason, "ErrorInfo.reason must be set"
    assert info.domain == domain
    return info


def assert_invalid(error: grpc.aio.AioRpcError, field: str, domain: str) -> None:
    assert_refusal(error, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", domain)
    assert field in (error.details() or ""), f"message {error.details()!r} does not name {field!r}"
    bad_requests = details_of(error, error_details_pb2.BadRequest)
    assert len(bad_requests) == 1, "INVALID_ARGUMENT must carry a google.rpc.BadRequest"
    fields = [v.field for v in bad_requests[0].field_violations]
    assert field in fields, f"BadRequest names {fields}, not {field!r}"
    assert all(v.description for v in bad_requests[0].field_violations)


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(count)]


async def fill(service: Service, prefix: str) -> list[str]:
    """Reserve the scarce resource up to its capacity (or MAX_FILL); prove it full when it can be filled."""
    case = service.case
    taken = ids(prefix, min(case.scarce_capacity, MAX_FILL))
    for reservation_id in taken:
        response = await service.reserve(reservation_id, case.scarce_request(reservation_id))
        assert response.reservation.status == HELD
    if case.scarce_capacity <= MAX_FILL:
        error = await rejected(service.reserve(f"{prefix}-over", case.scarce_request(f"{prefix}-over")))
        assert_refusal(error, CAPACITY_REFUSALS, None, service.full_name)
    return taken


async def gather_outcomes(calls: Sequence[Awaitable[Any]]) -> list[Any]:
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    unexpected = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, grpc.aio.AioRpcError)]
    assert unexpected == [], f"calls failed outside gRPC: {unexpected!r}"
    return outcomes


# --- P1 idempotent reserve ---------------------------------------------------------------------------


async def test_p1_reserve_twice_returns_the_same_reservation(launch: Launch) -> None:
    service = await launch()
    first = await service.reserve("trip-p1/x")
    reservation = first.reservation
    assert reservation.reservation_id == "trip-p1/x"
    assert reservation.status == HELD
    assert reservation.price.minor_units >= 0 and reservation.price.currency_code  # notify: a message is free
    assert reservation.expire_time.ToDatetime() > reservation.create_time.ToDatetime()
    assert not reservation.tombstone
    after_first = await service.snapshot()

    service.clock.advance(30)  # a retry later on must neither refresh the hold nor take more
    again = await service.reserve("trip-p1/x")

    assert again == first
    assert await service.snapshot() == after_first
    assert await service.count() == 1
    row = await service.row("trip-p1/x")
    assert row is not None and row["status"] == "HELD"
    assert row["price_minor"] == reservation.price.minor_units
    await service.assert_conserved()


@pytest.mark.postgresql
async def test_p1_concurrent_first_reserves_of_one_id_hold_once(launch: Launch) -> None:
    service = await launch()
    outcomes = await gather_outcomes([service.reserve("trip-p1c/x") for _ in range(8)])
    errors = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert errors == [], [(e.code(), e.details()) for e in errors]
    assert all(o == outcomes[0] for o in outcomes)
    assert await service.count() == 1
    await service.assert_conserved()


async def test_p1_same_id_other_details_is_a_conflict(launch: Launch) -> None:
    service = await launch()
    original = await service.reserve("trip-p1b/x")
    before = await service.snapshot()

    error = await rejected(service.reserve("trip-p1b/x", service.case.other_request("trip-p1b/x")))

    assert_refusal(error, grpc.StatusCode.ALREADY_EXISTS, "RESERVATION_CONFLICT", service.full_name)
    assert await service.snapshot() == before
    assert await service.get("trip-p1b/x") == original.reservation
    await service.assert_conserved()


async def test_p1_other_details_are_a_valid_reservation_of_their_own(launch: Launch) -> None:
    """Guards the conflict test: other_request must be refused for its id, not for being invalid."""
    service = await launch()
    response = await service.reserve("trip-p1o/x", service.case.other_request("trip-p1o/x"))
    assert response.reservation.status == HELD
    await service.assert_conserved()


# --- P2 idempotent confirm / cancel ------------------------------------------------------------------


@pytest.mark.postgresql
async def test_p2_confirm_twice_then_cancel_twice(launch: Launch) -> None:
    service = await launch()
    await service.reserve("trip-p2/x")
    service.clock.advance(5)
    confirmed = await service.confirm("trip-p2/x")
    assert confirmed.reservation.status == CONFIRMED
    assert confirmed.reservation.update_time.ToDatetime() > confirmed.reservation.create_time.ToDatetime()
    after_confirm = await service.snapshot()
    await service.assert_conserved()

    service.clock.advance(5)  # a repeat that rewrote the row would move update_time
    assert await service.confirm("trip-p2/x") == confirmed
    assert await service.snapshot() == after_confirm

    service.clock.advance(5)
    cancelled = await service.cancel("trip-p2/x")
    assert cancelled.reservation.status == CANCELLED
    assert not cancelled.reservation.tombstone
    after_cancel = await service.snapshot()
    await service.assert_conserved()

    service.clock.advance(5)
    assert await service.cancel("trip-p2/x") == cancelled
    assert await service.snapshot() == after_cancel
    assert (await service.get("trip-p2/x")).status == CANCELLED
    row = await service.row("trip-p2/x")
    assert row is not None and row["status"] == "CANCELLED"
    await service.assert_conserved()


async def test_p2_cancel_a_hold_twice(launch: Launch) -> None:
    service = await launch()
    await service.reserve("trip-p2h/x")
    service.clock.advance(5)
    cancelled = await service.cancel("trip-p2h/x")
    assert cancelled.reservation.status == CANCELLED
    after_cancel = await service.snapshot()

    service.clock.advance(5)
    assert await service.cancel("trip-p2h/x") == cancelled
    assert await service.snapshot() == after_cancel
    assert await service.count("HELD") == 0
    await service.assert_conserved()


@pytest.mark.postgresql
async def test_p2_racing_confirm_and_cancel_end_cancelled(launch: Launch) -> None:
    service = await launch()
    await service.reserve("trip-p2r/x")
    outcomes = await gather_outcomes(
        [service.confirm("trip-p2r/x"), service.cancel("trip-p2r/x"), service.confirm("trip-p2r/x")]
    )
    assert not isinstance(outcomes[1], grpc.aio.AioRpcError), outcomes[1]
    for outcome in (outcomes[0], outcomes[2]):
        if isinstance(outcome, grpc.aio.AioRpcError):
            assert_refusal(outcome, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_CANCELLED", service.full_name)
    assert (await service.get("trip-p2r/x")).status == CANCELLED
    await service.assert_conserved()


# --- P3 empty cancel ---------------------------------------------------------------------------------


@pytest.mark.postgresql
async def test_p3_cancel_of_an_unknown_id_records_a_tombstone(launch: Launch) -> None:
    service = await launch()
    domain_before = await service.snapshot(domain_only=True)

    response = await service.cancel("trip-p3/x")

    reservation = response.reservation
    assert reservation.reservation_id == "trip-p3/x"
    assert reservation.status == CANCELLED
    assert reservation.tombstone is True
    assert not reservation.HasField("expire_time")
    row = await service.row("trip-p3/x")
    assert row is not None
    assert (row["status"], bool(row["tombstone"])) == ("CANCELLED", True)
    assert await service.snapshot(domain_only=True) == domain_before
    assert await service.get("trip-p3/x") == reservation

    after = await service.snapshot()
    service.clock.advance(5)
    assert await service.cancel("trip-p3/x") == response
    assert await service.snapshot() == after
    await service.assert_conserved()


# --- P4 no hanging hold ------------------------------------------------------------------------------


async def test_p4_reserve_after_cancel_is_aborted(launch: Launch) -> None:
    service = await launch()
    await service.reserve("trip-p4/x")
    await service.cancel("trip-p4/x")
    before = await service.snapshot()

    for request in (service.case.reserve_request("trip-p4/x"), service.case.other_request("trip-p4/x")):
        error = await rejected(service.reserve("trip-p4/x", request))
        assert_refusal(error, grpc.StatusCode.ABORTED, "RESERVATION_CANCELLED", service.full_name)

    assert await service.snapshot() == before
    assert (await service.get("trip-p4/x")).status == CANCELLED
    await service.assert_conserved()


@pytest.mark.postgresql
async def test_p4_late_reserve_after_a_tombstone_is_aborted(launch: Launch) -> None:
    service = await launch()
    await service.cancel("trip-p4t/x")
    before = await service.snapshot()

    for request in (service.case.reserve_request("trip-p4t/x"), service.case.other_request("trip-p4t/x")):
        error = await rejected(service.reserve("trip-p4t/x", request))
        assert_refusal(error, grpc.StatusCode.ABORTED, "RESERVATION_CANCELLED", service.full_name)

    assert await service.snapshot() == before
    tombstone = await service.get("trip-p4t/x")
    assert (tombstone.status, tombstone.tombstone) == (CANCELLED, True)
    await service.assert_conserved()


# --- P5 expiry ---------------------------------------------------------------------------------------


@pytest.mark.postgresql
async def test_p5_sweeper_expires_holds_and_gives_capacity_back(launch: Launch) -> None:
    service = await launch(hold_seconds=HOLD_SECONDS)
    start = service.clock.now()
    taken = await fill(service, "trip-p5s")
    first = await service.get(taken[0])
    assert first.expire_time.ToDatetime().replace(tzinfo=start.tzinfo) == start + timedelta(seconds=HOLD_SECONDS)

    service.clock.advance(HOLD_SECONDS)  # expire_at == now counts as expired
    assert await service.running.store.expire_due() == len(taken)

    for reservation_id in taken:
        reservation = await service.get(reservation_id)
        assert reservation.status == EXPIRED
        assert not reservation.HasField("expire_time")
    assert await service.count("EXPIRED") == len(taken)
    await service.assert_conserved()
    assert await service.running.store.expire_due() == 0

    error = await rejected(service.confirm(taken[0]))
    assert_refusal(error, grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED", service.full_name)

    # Capacity is back: the same amount can be held again under new ids.
    again = await fill(service, "trip-p5s2")
    assert len(again) == len(taken)
    await service.assert_conserved()


async def test_p5_expired_hold_cannot_be_revived(launch: Launch) -> None:
    service = await launch(hold_seconds=HOLD_SECONDS)
    await service.reserve("trip-p5r/x")
    service.clock.advance(HOLD_SECONDS + 1)
    assert await service.running.store.expire_due() == 1
    before = await service.snapshot()

    error = await rejected(service.reserve("trip-p5r/x"))
    assert_refusal(error, grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED", service.full_name)
    assert (await service.cancel("trip-p5r/x")).reservation.status == EXPIRED  # released already: OK
    assert await service.snapshot() == before
    await service.assert_conserved()


async def test_p5_repeat_reserve_of_an_overdue_hold_expires_it(launch: Launch) -> None:
    service = await launch(hold_seconds=HOLD_SECONDS)
    await service.reserve("trip-p5o/x")
    service.clock.advance(HOLD_SECONDS + 1)
    error = await rejected(service.reserve("trip-p5o/x"))
    assert_refusal(error, grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED", service.full_name)
    row = await service.row("trip-p5o/x")
    assert row is not None and row["status"] == "EXPIRED"
    await service.assert_conserved()
    assert await service.running.store.expire_due() == 0


async def test_p5_confirm_after_expiry_before_any_sweep_is_refused_and_releases(launch: Launch) -> None:
    service = await launch(hold_seconds=HOLD_SECONDS)
    taken = await fill(service, "trip-p5l")
    service.clock.advance(HOLD_SECONDS)  # exactly at expire_at: the lazy path agrees with the sweeper

    for reservation_id in taken:
        error = await rejected(service.confirm(reservation_id))
        assert_refusal(error, grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED", service.full_name)
        row = await service.row(reservation_id)
        assert row is not None and row["status"] == "EXPIRED"
    await service.assert_conserved()
    assert await service.running.store.expire_due() == 0  # the refused Confirm released them already

    again = await fill(service, "trip-p5l2")
    assert len(again) == len(taken)
    await service.assert_conserved()


async def test_p5_cancel_of_an_overdue_hold_releases_it_as_expired(launch: Launch) -> None:
    service = await launch(hold_seconds=HOLD_SECONDS)
    await service.reserve("trip-p5c/x")
    service.clock.advance(HOLD_SECONDS + 1)
    response = await service.cancel("trip-p5c/x")
    assert response.reservation.status == EXPIRED
    assert await service.running.store.expire_due() == 0
    await service.assert_conserved()


async def test_p5_a_hold_confirmed_in_time_never_expires(launch: Launch) -> None:
    service = await launch(hold_seconds=HOLD_SECONDS)
    await service.reserve("trip-p5t/x")
    service.clock.advance(HOLD_SECONDS - 1)
    assert (await service.confirm("trip-p5t/x")).reservation.status == CONFIRMED
    service.clock.advance(10 * HOLD_SECONDS)
    assert await service.running.store.expire_due() == 0
    assert (await service.get("trip-p5t/x")).status == CONFIRMED
    await service.assert_conserved()


@pytest.mark.postgresql
async def test_p5_background_sweeper_expires_on_its_own(launch: Launch) -> None:
    service = await launch(hold_seconds=HOLD_SECONDS, sweep_seconds=0.02)
    await service.reserve("trip-p5b/x")
    service.clock.advance(HOLD_SECONDS + 1)
    deadline = asyncio.get_running_loop().time() + 5
    while (status := (await service.get("trip-p5b/x")).status) == HELD:
        assert asyncio.get_running_loop().time() < deadline, "the sweeper did not expire the hold within 5 s"
        await asyncio.sleep(0.02)
    assert status == EXPIRED
    await service.assert_conserved()


# --- P6 no oversell ----------------------------------------------------------------------------------


async def reserve_concurrently(service: Service, prefix: str, count: int) -> tuple[list[str], list[Any]]:
    """Fire count concurrent scarce Reserves; return the ids that got a hold and the refusals."""
    wanted = ids(prefix, count)
    outcomes = await gather_outcomes([service.reserve(r, service.case.scarce_request(r)) for r in wanted])
    won = [r for r, o in zip(wanted, outcomes, strict=True) if not isinstance(o, grpc.aio.AioRpcError)]
    refusals = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    for refusal in refusals:
        assert_refusal(refusal, CAPACITY_REFUSALS, None, service.full_name)
    return won, refusals


@pytest.mark.postgresql
async def test_p6_concurrent_reserves_never_oversell(launch: Launch) -> None:
    service = await launch()
    capacity = service.case.scarce_capacity
    attempts = min(3 * capacity, MAX_CONCURRENT)

    won, _refusals = await reserve_concurrently(service, "trip-p6", attempts)

    assert len(won) <= capacity, f"{len(won)} holds on a capacity of {capacity}"
    assert len(won) == min(attempts, capacity), "capacity left unsold while Reserves were refused"
    assert await service.count("HELD") == len(won)
    await service.assert_conserved()

    half = len(won) // 2
    settled = await gather_outcomes([service.confirm(r) for r in won[:half]] + [service.cancel(r) for r in won[half:]])
    assert [o for o in settled if isinstance(o, grpc.aio.AioRpcError)] == []
    assert await service.count("CONFIRMED") == half
    assert await service.count("CANCELLED") == len(won) - half
    await service.assert_conserved()

    # What was cancelled can be sold again, what was confirmed cannot be sold twice.
    won_again, _ = await reserve_concurrently(service, "trip-p6b", attempts)
    assert len(won_again) == min(attempts, capacity - half)
    await service.assert_conserved()


# --- P7 bad input ------------------------------------------------------------------------------------


async def test_p7_bad_input_is_invalid_argument_and_writes_nothing(launch: Launch) -> None:
    service = await launch()
    assert service.case.bad_inputs, "a service must list its malformed requests"
    before = await service.snapshot()
    problems: list[str] = []
    for number, bad in enumerate(service.case.bad_inputs):
        reservation_id = f"trip-p7-{number}/x"
        try:
            error = await rejected(service.reserve(reservation_id, bad.build(reservation_id)))
            assert_invalid(error, bad.field, service.full_name)
            assert await service.row(reservation_id) is None, "a row was written"
            assert await service.snapshot() == before, "the database changed"
        except AssertionError as failure:
            problems.append(f"{bad.label}: {failure}")
    assert problems == []
    await service.assert_conserved()


async def test_p7_empty_reservation_id_is_invalid_everywhere(launch: Launch) -> None:
    service = await launch()
    before = await service.snapshot()
    calls = {
        "Reserve": service.reserve(""),
        "Confirm": service.confirm(""),
        "Cancel": service.cancel(""),
        "GetReservation": service.get(""),
    }
    for method, call in calls.items():
        error = await rejected(call)
        try:
            assert_invalid(error, "reservation_id", service.full_name)
        except AssertionError as failure:
            raise AssertionError(f"{method}: {failure}") from failure
    assert await service.snapshot() == before


# --- P8 business refusal -----------------------------------------------------------------------------


@pytest.mark.postgresql
async def test_p8_business_refusals_carry_a_reason_and_hold_nothing(launch: Launch) -> None:
    service = await launch()
    if not service.case.refusals:
        pytest.skip(f"{service.case.name} declares no business refusal")
    before = await service.snapshot()
    problems: list[str] = []
    for number, refusal in enumerate(service.case.refusals):
        reservation_id = f"trip-p8-{number}/x"
        try:
            error = await rejected(service.reserve(reservation_id, refusal.build(reservation_id)))
            assert_refusal(error, refusal.code, refusal.reason, service.full_name)
            assert await service.row(reservation_id) is None, "a row was written"
            assert await service.snapshot() == before, "the database changed"
        except AssertionError as failure:
            problems.append(f"{refusal.label}: {failure}")
    assert problems == []
    await service.assert_conserved()


# --- Confirm / Get of what cannot be confirmed -------------------------------------------------------


async def test_confirm_and_get_of_an_unknown_id_are_not_found(launch: Launch) -> None:
    service = await launch()
    before = await service.snapshot()
    error = await rejected(service.confirm("trip-nf/x"))
    assert_refusal(error, grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND", service.full_name)
    error = await rejected(service.get("trip-nf/x"))
    assert_refusal(error, grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND", service.full_name)
    assert await service.snapshot() == before


async def test_confirm_after_cancel_or_tombstone_is_refused(launch: Launch) -> None:
    service = await launch()
    await service.reserve("trip-cc/x")
    await service.cancel("trip-cc/x")
    await service.cancel("trip-cc-tomb/x")
    before = await service.snapshot()
    for reservation_id in ("trip-cc/x", "trip-cc-tomb/x"):
        error = await rejected(service.confirm(reservation_id))
        assert_refusal(error, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_CANCELLED", service.full_name)
    assert await service.snapshot() == before
    await service.assert_conserved()


@pytest.mark.postgresql
async def test_contract_holds_with_the_services_background_jobs_running(launch: Launch) -> None:
    """The other tests start the service without its own background jobs; here they run, as in production."""
    service = await launch(background=True, sweep_seconds=0.05)
    first = await service.reserve("trip-bg/x")
    assert (await service.reserve("trip-bg/x")).reservation == first.reservation
    confirmed = await service.confirm("trip-bg/x")
    assert confirmed.reservation.status == CONFIRMED
    assert (await service.confirm("trip-bg/x")).reservation == confirmed.reservation
    await service.reserve("trip-bg/y")
    cancelled = await service.cancel("trip-bg/y")
    assert (await service.cancel("trip-bg/y")).reservation == cancelled.reservation
    assert (await service.cancel("trip-bg/z")).reservation.tombstone
    error = await rejected(service.reserve("trip-bg/z"))
    assert_refusal(error, grpc.StatusCode.ABORTED, "RESERVATION_CANCELLED", service.full_name)
    await service.assert_conserved()
    assert (await service.cancel("trip-bg/x")).reservation.status == CANCELLED
    await service.assert_conserved()


# --- health, reflection, log context -----------------------------------------------------------------


async def test_health_reports_serving(launch: Launch) -> None:
    service = await launch()
    assert service.full_name.startswith("tripmesh.v1.")
    descriptor_pool.Default().FindServiceByName(service.full_name)  # a real service name, not a typo
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", service.full_name):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=CALL_TIMEOUT)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    error = await rejected(health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=CALL_TIMEOUT))
    assert error.code() is grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_the_service(launch: Launch) -> None:
    service = await launch()
    reflection = reflection_pb2_grpc.ServerReflectionStub(service.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=service.full_name),
    ]
    answers = [a async for a in reflection.ServerReflectionInfo(iter(requests), timeout=CALL_TIMEOUT)]
    assert len(answers) == 2
    listed = {s.name for s in answers[0].list_services_response.service}
    assert {service.full_name, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed

    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in answers[1].file_descriptor_response.file_descriptor_proto
    ]
    package, _, short_name = service.full_name.rpartition(".")
    methods = {
        m.name for f in files if f.package == package for s in f.service if s.name == short_name for m in s.method
    }
    assert {"Reserve", "Confirm", "Cancel", "GetReservation"} <= methods


async def test_trip_id_metadata_reaches_the_log_context(launch: Launch) -> None:
    service = await launch()
    metadata = ((TRIP_ID_METADATA, "t-123"),)
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await service.reserve("t-123/x", metadata=metadata)
        await rejected(service.confirm("t-123/unknown", metadata=metadata))
    assert logs, "nothing was logged"
    assert all(entry.get("trip_id") == "t-123" for entry in logs), [e for e in logs if "trip_id" not in e]
    refused = [e for e in logs if e["event"] == "rpc_refused"]
    assert len(refused) == 1
    assert (refused[0]["rpc"], refused[0]["reason"]) == ("Confirm", "RESERVATION_NOT_FOUND")
