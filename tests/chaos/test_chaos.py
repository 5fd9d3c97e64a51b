"""Chaos: hundreds of trips booked while processes are SIGKILLed at random and participants misbehave.

Every component runs as its own process. The participants inject faults by configuration (refused
calls, lost replies, latency, an outage window, a hold that has expired at Confirm for trips marked
`hold-expired`), hold for a short time and sweep often. Clients book a mix of trips (most confirm;
some with a declined card, a sold-out flight or hotel, an unknown hotel, a slow hotel, or a hold that
expires before Confirm), each resending its BookTrip with the same trip id on UNAVAILABLE or a cut
connection until it gets an answer. Meanwhile the coordinator is SIGKILLed at random moments and
restarted, and each participant is SIGKILLed and restarted once on the same port and database.

Then, with every accepted trip terminal and every stale hold swept, the databases are read directly:
no acknowledged trip is lost, I1-I6 hold (`check_invariants`), each money movement happened at most
once per reservation (I7, from the payment ledger), no e-mail went out for a cancelled trip, and the
trips that had to fail did. The seed (TRIPMESH_CHAOS_SEED to replay) is in every failure message and
in the chaos report at the end of the run, with the counts.
"""

from __future__ import annotations

import asyncio
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

import grpc
import pytest
from sqlalchemy import text

from services.flight.catalogue import ROUTES
from tests.support.chaos import (
    PARTICIPANTS,
    REPORT,
    SEED_VAR,
    TERMINAL,
    ProcessMesh,
    chaos_seed,
    ledger_counts,
    ledger_problems,
    mail_ids_by_trip,
    reservation_rows,
    state_name,
    trip_request,
)
from tests.support.invariants import check_invariants
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

# (kind, share of the trips); "ok" trips should confirm, the others must not.
MIX = {
    "ok": 0.62,
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
        for index, name in enumerate(PARTICIPANTS)
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


@dataclass
class PlannedTrip:
    kind: str
    request: trip_pb.BookTripRequest
    start_at: float  # seconds after the booking starts
    deadline: float  # of each BookTrip call; a short one is answered before the trip is terminal
    calls: int = 0
    accepted: bool = False
    answered: int | None = None  # the state in the first OK answer
    error: str = ""  # a final non-retryable error, or why the client gave up

    @property
    def trip_id(self) -> str:
        return self.request.trip_id


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
    return trip_request(trip_id, **options)  # type: ignore[arg-type]


def plan_trips(rng: random.Random) -> list[PlannedTrip]:
    kinds = rng.choices(list(MIX), list(MIX.values()), k=TRIPS)
    for kind in MIX:  # at least a few of each
        kinds[rng.randrange(TRIPS)] = kind
    return [
        PlannedTrip(
            kind,
            plan_trip(rng, i, kind),
            start_at=rng.uniform(0, BOOKING_WINDOW),
            deadline=rng.choice([4.0, 4.0, 4.0, rng.uniform(0.1, 1.0)]),
        )
        for i, kind in enumerate(kinds)
    ]


def spread(rng: random.Random, count: int, start: float, end: float, gap: float) -> list[float]:
    """`count` random moments in [start, end], at least `gap` apart."""
    slack = (end - start) - gap * (count - 1)
    assert slack > 0
    cuts = sorted(rng.uniform(0, slack) for _ in range(count))
    return [start + cut + gap * i for i, cut in enumerate(cuts)]


def plan_kills(rng: random.Random) -> list[tuple[float, str]]:
    kills = [(t, "coordinator") for t in spread(rng, COORDINATOR_KILLS, 1.0, BOOKING_WINDOW + 2.0, 2.5)]
    kills += [(rng.uniform(2.0, BOOKING_WINDOW), name) for name in PARTICIPANTS]
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


async def client(stub: trip_grpc.TripCoordinatorStub, trip: PlannedTrip, begin: float, give_up: float) -> None:
    """Book one trip: resend the same BookTrip on a cut connection or no answer, until one comes."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, begin + trip.start_at - loop.time()))  # this client's start time
    backoff = 0.05
    while loop.time() < give_up:
        trip.calls += 1
        try:
            reply = await stub.BookTrip(trip.request, timeout=trip.deadline)
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE:
                trip.error = f"{error.code().name}: {error.details()}"
                return
            await asyncio.sleep(backoff)  # a retry's backoff, not a wait for a condition
            backoff = min(1.0, backoff * 2)
            continue
        trip.accepted, trip.answered = True, reply.trip.state
        return
    trip.error = f"no answer after {trip.calls} calls"


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
    with ProcessMesh(tmp_path, env=mesh_env(chaos_seed()), log_level=log_level) as running:
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
            rows = await conn.execute(text("SELECT trip_id, state, failure_reason FROM trips"))
            in_log = {r.trip_id: (r.state, r.failure_reason or "") for r in rows}
        problems = await check_invariants(coordinator, participants)
        ledger = await ledger_counts(participants["payment"])
        problems += ledger_problems(ledger)
        notify_rows = await reservation_rows(participants["notify"])
    mail_ids = mail_ids_by_trip(mesh.mail_dir)
    mails = Counter({trip_id: len(ids) for trip_id, ids in mail_ids.items()})

    # nothing acknowledged is lost, and an answer a client saw as final stays final
    lost = [t.trip_id for t in accepted if t.trip_id not in in_log]
    changed = {
        t.trip_id: (state_name(t.answered), in_log[t.trip_id][0])
        for t in accepted
        if t.answered in TERMINAL and t.trip_id in in_log and state_name(t.answered) != in_log[t.trip_id][0]
    }
    # the trips that had to fail did, for their own reason or a later one; no e-mail for a cancelled trip
    wrong = {
        t.trip_id: in_log[t.trip_id]
        for t in accepted
        if t.kind in MUST_CANCEL and in_log.get(t.trip_id, ("",))[0] == "CONFIRMED"
    }
    mailed_cancelled = [i for i, (state, _) in in_log.items() if state != "CONFIRMED" and mails[i]]
    unmailed = [i for i, (state, _) in in_log.items() if notify_rows.get(f"{i}/notify") == "CONFIRMED" and not mails[i]]
    captured_for_hold_expired = [
        t.trip_id
        for t in accepted
        if t.kind == "hold-expired" and ledger.get(f"{t.trip_id}/payment", Counter())["CAPTURE"]
    ]

    outcome = Counter((t.kind, in_log.get(t.trip_id, ("LOST",))[0]) for t in trips)
    own_reason = sum(1 for t in accepted if t.kind in MUST_CANCEL and MUST_CANCEL[t.kind] in in_log[t.trip_id][1])
    kills = Counter(name for _, name, _ in monkey.done)
    report = [
        f"{SEED_VAR}={seed}: {len(trips)} trips ({len(accepted)} accepted, "
        f"{sum(t.calls for t in trips)} BookTrip calls), booked in {booked_in:.1f} s, all terminal after "
        f"{settled_in:.1f} s, test {time.monotonic() - began:.1f} s",
        f"SIGKILLs: {dict(kills)} (each restarted on the same port and database); process starts: {dict(mesh.starts)}",
        "outcomes: " + ", ".join(f"{k}/{s}={n}" for (k, s), n in sorted(outcome.items())),
        f"cancelled for their own reason: {own_reason} of "
        f"{sum(1 for t in trips if t.kind in MUST_CANCEL)}; e-mails: {sum(mails.values())} for {len(mails)} trips "
        f"(duplicates: {sum(n - 1 for n in mails.values() if n > 1)}), outbox drained: {drained}",
    ]
    REPORT.extend(report)
    print("\n".join(report))

    assert len(kills) == 1 + len(PARTICIPANTS) and kills["coordinator"] >= 5, f"{tag} kills: {monkey.done}"
    assert all(code == -9 for _, _, code in monkey.done), f"{tag} not all killed by SIGKILL: {monkey.done}"
    assert not lost, f"{tag} acknowledged trips missing from the step log: {lost}"
    assert not changed, f"{tag} trips whose final answer changed (answered, now): {changed}"
    assert problems == [], f"{tag} invariants violated:\n" + "\n".join(problems)
    assert not wrong, f"{tag} trips that had to be refused were confirmed: {wrong}"
    assert not captured_for_hold_expired, f"{tag} money captured although hotel Confirm was refused"
    assert not mailed_cancelled, f"{tag} e-mails sent for trips that are not confirmed: {mailed_cancelled}"
    # at-least-once delivery: a resend after a notify crash carries the same Message-ID, so it is recognisable
    mixed = {i: ids for i, ids in mail_ids.items() if len(set(ids)) != 1}
    assert not mixed, f"{tag} different Message-IDs for one trip: {mixed}"
    assert drained and not unmailed, f"{tag} confirmed notifications never delivered: {unmailed}"
    # Chaos may cancel a bookable trip (a reserve budget spent while a participant restarts, a hold that
    # expired while the coordinator was down or the machine overloaded): how many is timing, not a
    # property. That the mesh still books trips at all is.
    assert outcome["ok", "CONFIRMED"] > 0, f"{tag} no trip was confirmed: {outcome}"


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
