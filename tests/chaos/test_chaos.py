"""Chaos: hundreds of trips booked while processes are SIGKILLed at random and participants misbehave.

Every component runs as its own process. The participants inject faults by configuration (refused
calls, lost replies, latency, an outage window, a hold that has expired at Confirm for trips marked
`hold-expired`), hold for a short time and sweep often. Clients book a mix of trips (most confirm;
some with a declined card, a sold-out flight or hotel, an unknown hotel, a slow hotel, or a hold that
expires before Confirm), each resending its BookTrip with the same trip id on UNAVAILABLE or a cut
connection until it gets an answer. Meanwhile the coordinator is SIGKILLed at random moments and
restarted, and each participant is SIGKILLed and restarted once on the same port and database.

Some trips rent a car (some with named seats); some, once CONFIRMED, are changed (a longer stay,
another hotel, new dates, a car added or dropped, other seats, or a change that cannot be had) or
cancelled by their customer, each ChangeTrip/CancelTrip resent with the same change id on UNAVAILABLE
or a cut connection, as BookTrip is.

Then, with every accepted trip terminal and every stale hold swept, the databases are read directly:
no acknowledged trip or change is lost, every accepted change ended (APPLIED or REVERTED) and every
accepted cancellation CANCELLED its trip, I1-I6 hold (`check_invariants`), a trip holds at most one
seat/room/car reservation per part across its revisions and a cancelled one nothing, each money
movement happened at most once per reservation (I7, from the payment ledger), no booking e-mail went
out for a trip whose booking failed, and the trips that had to fail did. The seed (TRIPMESH_CHAOS_SEED
to replay) is in every failure message and in the chaos report at the end of the run, with the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from coordinator.demo import CITIES, Draw
from services.flight.catalogue import ROUTES
from tests.support.chaos import (
    REPORT,
    SEED_VAR,
    TERMINAL,
    WITH_CAR,
    ProcessMesh,
    chaos_seed,
    holding_problems,
    ledger_counts,
    ledger_problems,
    mail_ids_by_subject,
    reservation_rows,
    state_name,
    trip_request,
)
from tests.support.invariants import check_invariants
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

TRIPS = 240
BOOKING_WINDOW = 18.0  # seconds over which the trips start
COORDINATOR_KILLS = 6
HOLD_SECONDS = 15.0
BUDGET = 150.0  # the whole test, from the first process started to the last check

# (kind, share of the trips); "ok" and "car" trips should confirm, "change" and "cancel" ones too before
# they are changed or cancelled; the others must not confirm.
MIX = {
    "ok": 0.38,
    "car": 0.08,
    "change": 0.10,
    "cancel": 0.06,
    "declined": 0.09,
    "flight-sold-out": 0.05,
    "hotel-sold-out": 0.05,
    "bad-hotel": 0.04,
    "hold-expired": 0.09,
    "slow-hotel": 0.06,
}
MUST_CANCEL = {
    "declined": "CARD_DECLINED",
    "flight-sold-out": "SOLD_OUT",
    "hotel-sold-out": "SOLD_OUT",
    "bad-hotel": "INVALID_ARGUMENT",
    "hold-expired": "HOLD_EXPIRED",
}
CUSTOMERS = [  # (customer, payment method, weight): cust-load has credit for any volume
    ("cust-load", "pm_load_visa", 8),
    ("cust-chen", "pm_chen_amex", 1),
    ("cust-fatima", "pm_fatima_visa", 1),
]
HOTELS = ("lis-alfama", "lis-chiado", "lon-southbank", "par-marais", "ams-jordaan", "bcn-gotic", "vie-ringstrasse")
# What a "change" trip changes once confirmed; "impossible" (a hotel nobody has) must be reverted.
CHANGES = ("longer-stay", "other-hotel", "new-dates", "car", "seats", "impossible")
FOLLOW_UP_BY = BOOKING_WINDOW - 4.0  # "change" and "cancel" trips start early: their follow-up runs under chaos
FIRST_DAY, LAST_DAY = date(2027, 3, 1), date(2027, 4, 29)
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
CLIENT_CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def faults(rules: list[dict[str, object]]) -> str:
    return json.dumps(rules)


def mesh_env(seed: int) -> dict[str, dict[str, str]]:
    participant = {
        name: {
            f"TRIPMESH_{name.upper()}_HOLD_SECONDS": str(HOLD_SECONDS),
            f"TRIPMESH_{name.upper()}_SWEEP_SECONDS": "0.5",
            "TRIPMESH_FAULT_SEED": str(seed + index),
        }
        for index, name in enumerate(WITH_CAR)
    }
    participant["flight"]["TRIPMESH_FLIGHT_FAULTS"] = faults(
        [
            {"method": "Reserve", "error_rate": 0.05},
            {"method": "*", "latency_ms": 20},
        ]
    )
    participant["hotel"]["TRIPMESH_HOTEL_FAULTS"] = faults(
        [
            # a hold that has expired when Confirm comes: the refusal comes after the commit decision
            {"method": "Confirm", "match": "hold-expired", "code": "FAILED_PRECONDITION", "reason": "HOLD_EXPIRED"},
            {"method": "Reserve", "match": "slow-hotel", "latency_ms": 1200},
            {"method": "*", "error_rate": 0.10},
        ]
    )
    participant["payment"]["TRIPMESH_PAYMENT_FAULTS"] = faults(
        [
            {"method": "*", "error_rate": 0.05, "when": "after"},  # the money moved, the reply is lost
            {"method": "*", "outage": [6, 7.5]},  # seconds after each start of the process
            {"method": "Reserve", "latency_ms": 50},
        ]
    )
    participant["notify"]["TRIPMESH_NOTIFY_FAULTS"] = faults([{"method": "*", "error_rate": 0.05, "when": "after"}])
    participant["car"]["TRIPMESH_CAR_FAULTS"] = faults([{"method": "*", "error_rate": 0.05}])
    coordinator = {
        "TRIPMESH_COORDINATOR_CALL_TIMEOUT_SECONDS": "2",
        "TRIPMESH_COORDINATOR_TRIP_TIMEOUT_SECONDS": "10",  # shorter than the holds
        "TRIPMESH_COORDINATOR_BOOK_WAIT_SECONDS": "5",
        "TRIPMESH_COORDINATOR_RESERVE_ATTEMPTS": "12",
        "TRIPMESH_COORDINATOR_CONFIRM_ATTEMPTS": "60",
        "TRIPMESH_COORDINATOR_CANCEL_ATTEMPTS": "60",
        "TRIPMESH_COORDINATOR_INITIAL_BACKOFF_SECONDS": "0.02",
        "TRIPMESH_COORDINATOR_MAX_BACKOFF_SECONDS": "1.0",
        "TRIPMESH_COORDINATOR_GRACE_SECONDS": "1",
    }
    return {**participant, "coordinator": coordinator}


# --- the plan: which trips, when; which kills, when --------------------------------------------------


FollowUp = trip_pb.ChangeTripRequest | trip_pb.CancelTripRequest


@dataclass
class PlannedTrip:
    kind: str
    request: trip_pb.BookTripRequest
    start_at: float  # seconds after the booking starts
    deadline: float  # of each BookTrip call; a short one is answered before the trip is terminal
    then: FollowUp | None = None  # sent once the trip is CONFIRMED
    variant: str = ""  # which change (CHANGES), or "cancel"
    calls: int = 0
    accepted: bool = False
    answered: int | None = None  # the state in the first OK answer
    error: str = ""  # a final non-retryable error, or why the client gave up
    then_calls: int = 0
    then_accepted: bool = False
    then_skipped: str = ""  # the booking's end when it was not CONFIRMED, so nothing was changed
    then_error: str = ""

    @property
    def trip_id(self) -> str:
        return self.request.trip_id

    @property
    def change_id(self) -> str:
        return self.then.change_id if isinstance(self.then, trip_pb.ChangeTripRequest) else "cancel"


def flight_ids(rng: random.Random, outbound_day: date, nights: int) -> tuple[str, str]:
    route = rng.choice([r for r in ROUTES if not r.regional])
    out = route.number + rng.choice([1, 3][: len(route.outbound_times)])
    back = route.number + rng.choice([2, 4][: len(route.return_times)])
    return_day = outbound_day + timedelta(days=nights)
    return f"TM{out}-{outbound_day:%Y%m%d}", f"TM{back}-{return_day:%Y%m%d}"


def plan_trip(rng: random.Random, index: int, kind: str) -> trip_pb.BookTripRequest:
    trip_id = f"chaos-{index:04d}-{kind}"
    nights = rng.randint(1, 4)
    first = FIRST_DAY + timedelta(days=rng.randrange((LAST_DAY - FIRST_DAY).days - nights))
    outbound, inbound = flight_ids(rng, first, nights)
    customer, method = rng.choices([(c, m) for c, m, _ in CUSTOMERS], [w for *_, w in CUSTOMERS])[0]
    dates = {"check_in": (first.year, first.month, first.day)}
    last = first + timedelta(days=nights)
    dates["check_out"] = (last.year, last.month, last.day)
    options: dict[str, object] = {
        "customer_id": customer,
        "payment_method_id": method,
        "outbound": outbound,
        "inbound": inbound,
        "hotel_id": rng.choice(HOTELS),
        **dates,
    }
    if kind == "declined":
        options.update(customer_id="cust-ada", payment_method_id="pm_ada_declined")
    elif kind == "flight-sold-out":  # the regional jet has 8 business seats
        options.update(
            outbound=f"TM401-{first:%Y%m%d}",
            inbound=f"TM402-{last:%Y%m%d}",
            cabin=flight_pb.CABIN_BUSINESS,
            passengers=9,
        )
    elif kind == "hotel-sold-out":  # every hotel has 2 suites a night
        options.update(room_type=hotel_pb.ROOM_TYPE_SUITE, rooms=3)
    elif kind == "bad-hotel":
        options.update(hotel_id="atlantis-deep")
    elif kind == "ok" and rng.random() < 0.15:
        options.update(hotel_id=None)  # a flight-only trip
    elif kind in ("car", "change", "cancel"):
        options.update(customer_id="cust-load", payment_method_id="pm_load_visa", passengers=rng.randint(1, 3))
    return trip_request(trip_id, **options)  # type: ignore[arg-type]


def rent_car(request: trip_pb.BookTripRequest, car_class: int = car_pb.CAR_CLASS_ECONOMY) -> trip_pb.TripCar:
    """A car in the trip's hotel's city for its stay."""
    hotel = request.hotel
    return trip_pb.TripCar(
        city=CITIES[hotel.hotel_id[:3]],
        car_class=car_class,  # type: ignore[arg-type]
        pick_up_date=hotel.check_in,
        drop_off_date=hotel.check_out,
    )


def name_seats(draw: Draw, flight: trip_pb.TripFlight) -> None:
    """Named economy seats, the same on both flights, that no other planned trip names."""
    flight.seats[:] = draw.seats((flight.outbound_flight_id, flight.return_flight_id), flight.passenger_count)


def moved(day: common_pb.Date, days: int) -> common_pb.Date:
    new = date(day.year, day.month, day.day) + timedelta(days=days)
    return common_pb.Date(year=new.year, month=new.month, day=new.day)


def plan_change(draw: Draw, request: trip_pb.BookTripRequest, variant: str) -> trip_pb.ChangeTripRequest:
    """The change a "change" trip asks for once confirmed (the booking is adapted where the change needs it:
    named seats to change, a car to drop)."""
    change = trip_pb.ChangeTripRequest(trip_id=request.trip_id, change_id=variant)
    hotel = trip_pb.TripHotel()
    hotel.CopyFrom(request.hotel)
    if variant == "longer-stay" and date(hotel.check_out.year, hotel.check_out.month, hotel.check_out.day) < LAST_DAY:
        hotel.check_out.CopyFrom(moved(hotel.check_out, 1))
        change.hotel.CopyFrom(hotel)
    elif variant in ("longer-stay", "other-hotel"):
        hotel.hotel_id = draw.rng.choice([h for h in HOTELS if h != hotel.hotel_id])
        change.hotel.CopyFrom(hotel)
    elif variant == "impossible":
        hotel.hotel_id = "atlantis-deep"
        change.hotel.CopyFrom(hotel)
    elif variant == "car" and draw.rng.random() < 0.5:
        request.car.CopyFrom(rent_car(request))
        change.drop_car = True
    elif variant == "car":
        change.car.CopyFrom(rent_car(request, car_pb.CAR_CLASS_COMPACT))
    elif variant == "seats":
        name_seats(draw, request.flight)
        change.flight.CopyFrom(request.flight)
        name_seats(draw, change.flight)
    else:  # new dates: a day later or earlier, flights, stay and car alike
        days = 1 if date(hotel.check_out.year, hotel.check_out.month, hotel.check_out.day) < LAST_DAY else -1
        change.flight.CopyFrom(request.flight)
        for field_name in ("outbound_flight_id", "return_flight_id"):
            number, _, day = getattr(request.flight, field_name).partition("-")
            when = date(int(day[:4]), int(day[4:6]), int(day[6:])) + timedelta(days=days)
            setattr(change.flight, field_name, f"{number}-{when:%Y%m%d}")
        hotel.check_in.CopyFrom(moved(hotel.check_in, days))
        hotel.check_out.CopyFrom(moved(hotel.check_out, days))
        change.hotel.CopyFrom(hotel)
    return change


def plan_trips(rng: random.Random) -> list[PlannedTrip]:
    draw = Draw(rng)
    kinds = rng.choices(list(MIX), list(MIX.values()), k=TRIPS)
    for kind in MIX:  # at least a few of each
        kinds[rng.randrange(TRIPS)] = kind
    planned = []
    for i, kind in enumerate(kinds):
        trip = PlannedTrip(
            kind,
            plan_trip(rng, i, kind),
            start_at=rng.uniform(0, FOLLOW_UP_BY if kind in ("change", "cancel") else BOOKING_WINDOW),
            deadline=rng.choice([4.0, 4.0, 4.0, rng.uniform(0.1, 1.0)]),
        )
        request = trip.request
        if kind == "car":
            request.car.CopyFrom(rent_car(request, rng.choice([car_pb.CAR_CLASS_ECONOMY, car_pb.CAR_CLASS_MIDSIZE])))
            if rng.random() < 0.5:
                name_seats(draw, request.flight)
        elif kind == "change":
            trip.variant = CHANGES[sum(p.kind == "change" for p in planned) % len(CHANGES)]  # each in turn
            trip.then = plan_change(draw, request, trip.variant)
        elif kind == "cancel":
            if rng.random() < 0.5:
                request.car.CopyFrom(rent_car(request))
            trip.variant, trip.then = "cancel", trip_pb.CancelTripRequest(trip_id=trip.trip_id)
        planned.append(trip)
    return planned


def spread(rng: random.Random, count: int, start: float, end: float, gap: float) -> list[float]:
    """`count` random moments in [start, end], at least `gap` apart."""
    slack = (end - start) - gap * (count - 1)
    assert slack > 0
    cuts = sorted(rng.uniform(0, slack) for _ in range(count))
    return [start + cut + gap * i for i, cut in enumerate(cuts)]


def plan_kills(rng: random.Random) -> list[tuple[float, str]]:
    kills = [(t, "coordinator") for t in spread(rng, COORDINATOR_KILLS, 1.0, BOOKING_WINDOW + 2.0, 2.5)]
    kills += [(rng.uniform(2.0, BOOKING_WINDOW), name) for name in WITH_CAR]
    return sorted(kills)


# --- the chaos monkey (a thread: starting a process blocks) ------------------------------------------


@dataclass
class Monkey:
    mesh: ProcessMesh
    schedule: list[tuple[float, str]]
    started_at: float
    stop: threading.Event = field(default_factory=threading.Event)
    done: list[tuple[float, str, int]] = field(default_factory=list)  # (when, whom, exit code)
    error: Exception | None = None

    def run(self) -> None:
        try:
            for at, name in self.schedule:
                if self.stop.wait(max(0.0, self.started_at + at - time.monotonic())):
                    return
                code = self.mesh.kill(name)
                self.done.append((time.monotonic() - self.started_at, name, code))
                self.mesh.start(name, timeout=30.0)
        except Exception as error:  # reported by the test, which fails with the seed
            self.error = error
            raise


# --- clients ------------------------------------------------------------------------------------------


async def resend(call: Callable[[], Awaitable[Any]], give_up: float) -> tuple[Any, int, str]:
    """Send an idempotent call again on a cut connection or no answer, until one comes or `give_up`:
    (the reply or None, how many calls, a final non-retryable error or why it gave up)."""
    loop = asyncio.get_running_loop()
    backoff, calls = 0.05, 0
    while loop.time() < give_up:
        calls += 1
        try:
            return await call(), calls, ""
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE:
                return None, calls, f"{error.code().name}: {error.details()}"
            await asyncio.sleep(backoff)  # a retry's backoff, not a wait for a condition
            backoff = min(1.0, backoff * 2)
    return None, calls, f"no answer after {calls} calls"


async def client(stub: trip_grpc.TripCoordinatorStub, trip: PlannedTrip, begin: float, give_up: float) -> None:
    """Book one trip, resending the same BookTrip until an answer comes; then change or cancel it, once it is
    CONFIRMED, as its kind says, resending the same ChangeTrip/CancelTrip likewise."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, begin + trip.start_at - loop.time()))  # this client's start time
    reply, trip.calls, trip.error = await resend(lambda: stub.BookTrip(trip.request, timeout=trip.deadline), give_up)
    if reply is None:
        return
    trip.accepted, trip.answered = True, reply.trip.state
    if trip.then is None:
        return
    state = await booking_end(stub, trip.trip_id, reply.trip.state, give_up)
    if state != common_pb.TRIP_STATE_CONFIRMED:
        trip.then_skipped = state_name(state) if state else "never read"
        return
    then = trip.then
    if isinstance(then, trip_pb.ChangeTripRequest):
        answer, trip.then_calls, trip.then_error = await resend(lambda: stub.ChangeTrip(then, timeout=4.0), give_up)
    else:
        answer, trip.then_calls, trip.then_error = await resend(lambda: stub.CancelTrip(then, timeout=4.0), give_up)
    trip.then_accepted = answer is not None


async def booking_end(stub: trip_grpc.TripCoordinatorStub, trip_id: str, state: int, give_up: float) -> int:
    """The state the booking ended in (0 if it could not be read before `give_up`), read with GetTrip."""
    loop = asyncio.get_running_loop()
    while state not in TERMINAL and loop.time() < give_up:
        await asyncio.sleep(0.2)
        with contextlib.suppress(grpc.aio.AioRpcError):
            state = (await stub.GetTrip(trip_pb.GetTripRequest(trip_id=trip_id), timeout=2.0)).trip.state
    return state if state in TERMINAL else 0


async def poll_terminal(
    stub: trip_grpc.TripCoordinatorStub, trip_ids: list[str], deadline: float
) -> tuple[dict[str, trip_pb.Trip], set[str]]:
    """GetTrip every trip until all are terminal or NOT_FOUND: the last read of each, and the trips
    still not terminal (or never read) at the deadline."""
    loop = asyncio.get_running_loop()
    last: dict[str, trip_pb.Trip] = {}
    pending = set(trip_ids)
    while pending and loop.time() < deadline:
        for trip_id in sorted(pending):
            try:
                trip = (await stub.GetTrip(trip_pb.GetTripRequest(trip_id=trip_id), timeout=5.0)).trip
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.NOT_FOUND:
                    pending.discard(trip_id)
                    continue
                break  # the coordinator is not answering: next round
            last[trip_id] = trip
            if trip.state in TERMINAL:
                pending.discard(trip_id)
        if pending:
            await asyncio.sleep(0.2)
    return last, pending


async def held_counts(mesh: ProcessMesh) -> dict[str, int]:
    async with mesh.databases() as (_coordinator, participants):
        counts = {}
        for name, engine in participants.items():
            async with engine.connect() as conn:
                query = text("SELECT COUNT(*) FROM reservations WHERE status = 'HELD'")
                counts[name] = (await conn.execute(query)).scalar_one()
        return counts


async def pending_mail(mesh: ProcessMesh) -> int:
    async with mesh.databases() as (_coordinator, participants), participants["notify"].connect() as conn:
        return int((await conn.execute(text("SELECT COUNT(*) FROM outbox WHERE state = 'PENDING'"))).scalar_one())


async def poll(check: Callable[[], Awaitable[bool]], deadline: float, interval: float = 0.25) -> bool:
    """Await `check()` until it is true or the deadline passes; whether it became true."""
    loop = asyncio.get_running_loop()
    while True:
        if await check():
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)


# --- the test -------------------------------------------------------------------------------------


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[ProcessMesh]:
    log_level = os.environ.get("TRIPMESH_CHAOS_LOG_LEVEL", "warning")  # info: every step, in logs/<name>.log
    with ProcessMesh(tmp_path, env=mesh_env(chaos_seed()), log_level=log_level, participants=WITH_CAR) as running:
        yield running


async def test_chaos(mesh: ProcessMesh) -> None:
    seed = chaos_seed()
    tag = f"[{SEED_VAR}={seed}; logs and databases in {mesh.work_dir}]"
    print(f"chaos: {SEED_VAR}={seed} (set it to replay this run)")
    rng = random.Random(seed)
    trips = plan_trips(rng)
    loop = asyncio.get_running_loop()
    test_deadline = loop.time() + BUDGET

    began = time.monotonic()
    mesh.start_participants()
    mesh.start("coordinator")
    monkey = Monkey(mesh, plan_kills(rng), started_at=time.monotonic())
    chaos_thread = asyncio.create_task(asyncio.to_thread(monkey.run))
    try:
        async with grpc.aio.insecure_channel(mesh.address("coordinator"), options=CLIENT_CHANNEL_OPTIONS) as channel:
            stub = trip_grpc.TripCoordinatorStub(channel)
            begin = loop.time()
            give_up = begin + BOOKING_WINDOW + 40.0
            clients = asyncio.gather(*(client(stub, trip, begin, give_up) for trip in trips))
            await within(clients, test_deadline - loop.time(), f"{tag} the clients still booking")
            booked_in = loop.time() - begin
            await within(chaos_thread, 60.0, f"{tag} the chaos thread still killing")
            assert monkey.error is None, f"{tag} the chaos monkey failed: {monkey.error!r}"
            if not mesh.procs["coordinator"].running():
                mesh.start("coordinator")
            sent = [t.trip_id for t in trips]
            final, unsettled = await poll_terminal(stub, sent, deadline=min(test_deadline, loop.time() + 60.0))
    finally:
        monkey.stop.set()
        if not chaos_thread.done():
            await asyncio.wait_for(chaos_thread, timeout=60.0)
    settled_in = time.monotonic() - began

    accepted = [t for t in trips if t.accepted]
    not_terminal = {i: state_name(final[i].state) if i in final else "never read" for i in unsettled}
    assert not not_terminal, f"{tag} trips not terminal (GetTrip) in time: {not_terminal}"
    refused = {t.trip_id: t.error for t in trips if not t.accepted}
    assert not refused, f"{tag} BookTrip never accepted these trips: {refused}"

    # every stale hold (a notification whose confirm failed, a late hold) is released by the sweeper
    swept = await poll(lambda: _no_holds(mesh), deadline=min(test_deadline, loop.time() + HOLD_SECONDS + 10.0))
    assert swept, f"{tag} participants still hold something: {await held_counts(mesh)}"
    drained = await poll(lambda: _no_pending_mail(mesh), deadline=min(test_deadline, loop.time() + 15.0))

    async with mesh.databases() as (coordinator, participants):
        async with coordinator.connect() as conn:
            rows = await conn.execute(text("SELECT trip_id, state, failure_reason, operations FROM trips"))
            in_log = {r.trip_id: (r.state, r.failure_reason or "") for r in rows}
            rows = await conn.execute(text("SELECT trip_id, operations FROM trips WHERE operations IS NOT NULL"))
            ops = {r.trip_id: {op["id"]: op for op in _json(r.operations)} for r in rows}
        problems = await check_invariants(coordinator, participants)
        ledger = await ledger_counts(participants["payment"])
        problems += ledger_problems(ledger)
        holdings = await holding_problems(participants, {i: state for i, (state, _) in in_log.items()})
        notify_rows = await reservation_rows(participants["notify"])
    mail_ids = mail_ids_by_subject(mesh.mail_dir)
    mails = Counter({subject.split()[2]: 1 for subject in mail_ids if subject.endswith(" is booked")})

    # nothing acknowledged is lost, and an answer a client saw as final stays final (unless changed since)
    lost = [t.trip_id for t in accepted if t.trip_id not in in_log]
    changed = {
        t.trip_id: (state_name(t.answered), in_log[t.trip_id][0])
        for t in accepted
        if t.answered in TERMINAL
        and t.trip_id in in_log
        and state_name(t.answered) != in_log[t.trip_id][0]
        and t.trip_id not in ops
    }
    # the trips that had to fail did, for their own reason or a later one; no booking e-mail for a trip whose
    # booking failed (a trip its customer cancelled had one)
    wrong = {
        t.trip_id: in_log[t.trip_id]
        for t in accepted
        if t.kind in MUST_CANCEL and in_log.get(t.trip_id, ("",))[0] == "CONFIRMED"
    }
    mailed_cancelled = [i for i, (state, _) in in_log.items() if state != "CONFIRMED" and mails[i] and i not in ops]
    unmailed = [i for i, (state, _) in in_log.items() if notify_rows.get(f"{i}/notify") == "CONFIRMED" and not mails[i]]
    captured_for_hold_expired = [
        t.trip_id
        for t in accepted
        if t.kind == "hold-expired" and ledger.get(f"{t.trip_id}/payment", Counter())["CAPTURE"]
    ]
    unfinished, follow_ups = follow_up_problems(trips, ops, in_log)

    outcome = Counter((t.kind, in_log.get(t.trip_id, ("LOST",))[0]) for t in trips)
    own_reason = sum(1 for t in accepted if t.kind in MUST_CANCEL and MUST_CANCEL[t.kind] in in_log[t.trip_id][1])
    kills = Counter(name for _, name, _ in monkey.done)
    sent = sum(len(ids) for ids in mail_ids.values())
    report = [
        f"{SEED_VAR}={seed}: {len(trips)} trips ({len(accepted)} accepted, "
        f"{sum(t.calls for t in trips)} BookTrip calls), booked in {booked_in:.1f} s, all terminal after "
        f"{settled_in:.1f} s, test {time.monotonic() - began:.1f} s",
        f"SIGKILLs: {dict(kills)} (each restarted on the same port and database); process starts: {dict(mesh.starts)}",
        "outcomes: " + ", ".join(f"{k}/{s}={n}" for (k, s), n in sorted(outcome.items())),
        *follow_ups,
        f"cancelled for their own reason: {own_reason} of "
        f"{sum(1 for t in trips if t.kind in MUST_CANCEL)}; e-mails: {sent} with {len(mail_ids)} subjects "
        f"(duplicates: {sent - len(mail_ids)}), outbox drained: {drained}",
    ]
    REPORT.extend(report)
    print("\n".join(report))

    assert len(kills) == 1 + len(WITH_CAR) and kills["coordinator"] >= 5, f"{tag} kills: {monkey.done}"
    assert all(code == -9 for _, _, code in monkey.done), f"{tag} not all killed by SIGKILL: {monkey.done}"
    assert not lost, f"{tag} acknowledged trips missing from the step log: {lost}"
    assert not changed, f"{tag} trips whose final answer changed (answered, now): {changed}"
    assert not unfinished, f"{tag} changes or cancellations that did not end as they must:\n" + "\n".join(unfinished)
    assert holdings == [], f"{tag} trips holding more than they booked:\n" + "\n".join(holdings)
    assert problems == [], f"{tag} invariants violated:\n" + "\n".join(problems)
    assert not wrong, f"{tag} trips that had to be refused were confirmed: {wrong}"
    assert not captured_for_hold_expired, f"{tag} money captured although hotel Confirm was refused"
    assert not mailed_cancelled, f"{tag} e-mails sent for trips that are not confirmed: {mailed_cancelled}"
    # at-least-once delivery: a resend after a notify crash carries the same Message-ID, so it is recognisable
    mixed = {subject: ids for subject, ids in mail_ids.items() if len(set(ids)) != 1}
    assert not mixed, f"{tag} different Message-IDs for one message: {mixed}"
    assert drained and not unmailed, f"{tag} confirmed notifications never delivered: {unmailed}"
    # Chaos may cancel a bookable trip (a reserve budget spent while a participant restarts, a hold that
    # expired while the coordinator was down or the machine overloaded): how many is timing, not a
    # property. That the mesh still books trips at all is.
    assert outcome["ok", "CONFIRMED"] > 0, f"{tag} no trip was confirmed: {outcome}"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def follow_up_problems(
    trips: list[PlannedTrip], ops: dict[str, dict[str, dict[str, Any]]], in_log: dict[str, tuple[str, str]]
) -> tuple[list[str], list[str]]:
    """Every change or cancellation the step log holds ended, as its kind must (a change APPLIED or REVERTED,
    "impossible" REVERTED, a cancellation with its trip CANCELLED); every one a client saw accepted is there.
    Also the report's lines: cars, and each kind of follow-up by how it ended."""
    problems = []
    for trip_id, by_id in sorted(ops.items()):
        for op_id, op in by_id.items():
            end, state = op["outcome"], in_log[trip_id][0]
            if end not in ("APPLIED", "REVERTED", "CANCELLED") or (end == "CANCELLED") != (state == "CANCELLED"):
                problems.append(f"{trip_id} {op['kind']} {op_id}: {end}, trip {state}")
            elif op_id == "impossible" and end != "REVERTED":
                problems.append(f"{trip_id}: a change to a hotel nobody has was {end}")
    for t in trips:
        if t.then_accepted and t.change_id not in ops.get(t.trip_id, {}):
            problems.append(f"{t.trip_id}: its {t.variant} was accepted but is not in the step log")
        if t.then is not None and not t.then_skipped and not t.then_accepted:
            problems.append(f"{t.trip_id}: its {t.variant} was never accepted: {t.then_error}")
    ended = Counter(
        (t.variant, ops[t.trip_id][t.change_id]["outcome"] if t.change_id in ops.get(t.trip_id, {}) else "not sent")
        for t in trips
        if t.then is not None
    )
    cars = [t for t in trips if t.request.HasField("car")]
    confirmed = sum(in_log.get(t.trip_id, ("",))[0] == "CONFIRMED" for t in cars)
    named = sum(bool(t.request.flight.seats) for t in trips)
    lines = [
        f"cars: {len(cars)} trips booked with a car ({confirmed} CONFIRMED at the end), {named} with named seats",
        "changes and cancellations (variant/outcome; 'not sent': the booking did not confirm): "
        + ", ".join(f"{v}/{o}={n}" for (v, o), n in sorted(ended.items()))
        + f"; {sum(t.then_calls for t in trips)} ChangeTrip/CancelTrip calls",
    ]
    return problems, lines


async def within(awaitable: Awaitable[object], seconds: float, what: str) -> None:
    """Await with a deadline; past it, fail with `what` (which carries the seed), not a bare TimeoutError."""
    try:
        await asyncio.wait_for(awaitable, timeout=max(1.0, seconds))
    except TimeoutError:
        raise AssertionError(f"{what} after {seconds:.0f} s") from None


async def _no_holds(mesh: ProcessMesh) -> bool:
    return not any((await held_counts(mesh)).values())


async def _no_pending_mail(mesh: ProcessMesh) -> bool:
    return await pending_mail(mesh) == 0
