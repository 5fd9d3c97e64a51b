"""The load: BookTrip requests spread over the catalogue, and a closed-loop driver over grpc.aio.

Trips are flight + hotel for the seeded load customer (cust-load / pm_load_visa, a practically
unlimited card), spread so that inventory never runs out on one fresh set of databases: trip `i` flies
economy on one of the 37 mainline flights x 60 days (150 seats each) and stays one night in one of the
8 hotels x 60 nights, its room type chosen so each (hotel, night) sells at most its 20 STANDARD,
8 DELUXE and 2 SUITE rooms. That is 14,400 trips before any room-night could sell out.

The driver runs `concurrency` workers, each sending BookTrip and waiting for the answer before sending
the next (a closed loop), until `trips` have been sent; it records each call's latency and the state
of the trip it got back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.flight.catalogue import ROUTES
from services.kit.tls import aio_channel, client_tls
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

START = date(2027, 3, 1)
DAYS = 60
HOTELS = (
    "lis-alfama",
    "lis-chiado",
    "lon-southbank",
    "par-marais",
    "ams-jordaan",
    "bcn-gotic",
    "rom-trastevere",
    "vie-ringstrasse",
)
# Per (hotel, night): 20 STANDARD, then 8 DELUXE, then 2 SUITE.
ROOM_SEQUENCE = (hotel_pb.ROOM_TYPE_STANDARD,) * 20 + (hotel_pb.ROOM_TYPE_DELUXE,) * 8 + (hotel_pb.ROOM_TYPE_SUITE,) * 2
MAX_TRIPS = len(HOTELS) * DAYS * len(ROOM_SEQUENCE)


def mainline_flight_numbers() -> list[str]:
    numbers = []
    for route in ROUTES:
        if route.regional:
            continue
        numbers += [f"TM{route.number + 1 + 2 * i}" for i in range(len(route.outbound_times))]
        numbers += [f"TM{route.number + 2 + 2 * i}" for i in range(len(route.return_times))]
    return numbers


FLIGHT_NUMBERS = mainline_flight_numbers()


def _date(day: date) -> common_pb.Date:
    return common_pb.Date(year=day.year, month=day.month, day=day.day)


class TripPlan:
    """Hands out trip requests for one fresh set of participant databases, never overselling."""

    def __init__(self, run_tag: str) -> None:
        self.run_tag = run_tag
        self.issued = 0

    def next(self, prefix: str) -> trip_pb.BookTripRequest:
        i = self.issued
        if i >= MAX_TRIPS:
            raise RuntimeError(f"more than {MAX_TRIPS} trips on one set of databases would sell rooms out")
        self.issued += 1
        flight_slot = i % (len(FLIGHT_NUMBERS) * DAYS)
        flight_day = START + timedelta(days=flight_slot // len(FLIGHT_NUMBERS))
        flight_id = f"{FLIGHT_NUMBERS[flight_slot % len(FLIGHT_NUMBERS)]}-{flight_day:%Y%m%d}"
        hotel_slot = i % (len(HOTELS) * DAYS)
        night = START + timedelta(days=hotel_slot // len(HOTELS))
        room_type = ROOM_SEQUENCE[(i // (len(HOTELS) * DAYS)) % len(ROOM_SEQUENCE)]
        return trip_pb.BookTripRequest(
            trip_id=f"{prefix}-{self.run_tag}-{i}",
            customer=trip_pb.Customer(customer_id="cust-load", email="load@example.com", name="Load Tester"),
            flight=trip_pb.TripFlight(outbound_flight_id=flight_id, cabin=flight_pb.CABIN_ECONOMY, passenger_count=1),
            hotel=trip_pb.TripHotel(
                hotel_id=HOTELS[hotel_slot % len(HOTELS)],
                room_type=room_type,
                check_in=_date(night),
                check_out=_date(night + timedelta(days=1)),
                room_count=1,
            ),
            payment_method_id="pm_load_visa",
            currency_code="EUR",
        )


@dataclass
class LoadResult:
    concurrency: int
    trips: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    done_at: list[float] = field(default_factory=list)  # seconds after the start, one per answer
    issue_end: float | None = None  # seconds after the start when the last trip was sent

    @property
    def throughput(self) -> float:
        """Trips/s while all `concurrency` workers were busy: answers received until the last trip was
        sent, over that time. The tail, when fewer and fewer trips are in flight, is left out, unless
        fewer than 20 answers came before it (then: every answer over the whole time)."""
        if self.issue_end and self.issue_end > 0:
            steady = sum(1 for t in self.done_at if t <= self.issue_end)
            if steady >= 20:
                return steady / self.issue_end
        return self.overall_throughput

    @property
    def overall_throughput(self) -> float:
        return self.trips / self.seconds if self.seconds > 0 else 0.0

    @property
    def confirmed(self) -> int:
        return self.states.get("TRIP_STATE_CONFIRMED", 0)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the latencies, in seconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
        return ordered[rank - 1]


async def _wait_ready(channel: grpc.aio.Channel) -> None:
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)


async def drive(
    address: str,
    plan: TripPlan,
    *,
    trips: int,
    concurrency: int,
    prefix: str,
    call_timeout: float = 60.0,
    on_done: Callable[[int], None] | None = None,
    time_limit: float = 600.0,
) -> LoadResult:
    """A closed loop of `concurrency` workers until `trips` BookTrip calls have been answered.

    Stops early (with what it has) after `time_limit` seconds, so a stuck mesh cannot hang the run.
    """
    result = LoadResult(concurrency=concurrency)
    requests = [plan.next(prefix) for _ in range(trips)]
    async with aio_channel(address, client_tls()) as channel:
        await _wait_ready(channel)
        stub = trip_grpc.TripCoordinatorStub(channel)
        queue = iter(requests)
        started = time.perf_counter()
        deadline = started + time_limit

        def stop_issuing() -> None:
            if result.issue_end is None:
                result.issue_end = time.perf_counter() - started

        async def worker() -> None:
            for request in queue:
                if time.perf_counter() > deadline:
                    break
                t0 = time.perf_counter()
                try:
                    response = await stub.BookTrip(request, timeout=call_timeout)
                    result.states[common_pb.TripState.Name(response.trip.state)] += 1
                except grpc.aio.AioRpcError as error:
                    result.errors[error.code().name] += 1
                t1 = time.perf_counter()
                result.latencies.append(t1 - t0)
                result.done_at.append(t1 - started)
                if on_done is not None:
                    on_done(1)
            stop_issuing()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    result.trips = len(result.latencies)
    return result


async def submit(
    address: str,
    plan: TripPlan,
    *,
    trips: int,
    prefix: str,
    concurrency: int = 512,
    wait: float = 2.0,
    attempts: int = 10,
    on_done: Callable[[int], None] | None = None,
    time_limit: float = 600.0,
) -> LoadResult:
    """Start `trips` trips without waiting for their end: BookTrip with a short deadline (`wait`).

    The coordinator answers with the trip as it is when the deadline nears (say RESERVING) and the saga
    goes on. A call that gets no answer in time may not have been accepted, so it is sent again with
    the same trip id (the idempotency key), up to `attempts` times. Used to leave trips in flight
    behind a slowed participant.
    """
    result = LoadResult(concurrency=concurrency)
    requests = [plan.next(prefix) for _ in range(trips)]
    async with aio_channel(address, client_tls()) as channel:
        await _wait_ready(channel)
        stub = trip_grpc.TripCoordinatorStub(channel)
        queue = iter(requests)
        started = time.perf_counter()
        deadline = started + time_limit

        async def worker() -> None:
            for request in queue:
                t0 = time.perf_counter()
                for _ in range(attempts):
                    if time.perf_counter() > deadline:
                        return
                    try:
                        response = await stub.BookTrip(request, timeout=wait)
                    except grpc.aio.AioRpcError as error:
                        result.errors[error.code().name] += 1
                        if error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                            break
                        continue
                    result.states[common_pb.TripState.Name(response.trip.state)] += 1
                    break
                result.latencies.append(time.perf_counter() - t0)
                if on_done is not None:
                    on_done(1)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    result.trips = len(result.latencies)
    return result
