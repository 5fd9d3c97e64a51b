"""`tripmesh demo`: a realistic mixed day of bookings against a mesh of its own, with faults injected.

The demo starts the whole mesh with the launcher (free ports, a fresh var dir), with fault rules in the
children's environment (services/kit/faults.py): random transient trouble (hotel and payment Reserve
fail now and then with UNAVAILABLE, some replies are lost after the effect happened, every call is a
little slow) and deliberate failures chosen by the trip, so that every compensation path of the saga
runs:

    scenario                     expected    compensation (what is undone)
    round trip + hotel           CONFIRMED   nothing
    flight only                  CONFIRMED   nothing
    hotel sold out               CANCELLED   the flight           (3 suites; a hotel has 2)
    flight sold out              CANCELLED   the hotel            (9 in business on an 8-seat jet)
    card declined                CANCELLED   flight and hotel     (pm_ada_declined)
    insufficient funds           CANCELLED   flight and hotel     (cust-bob's EUR 200 limit)
    hotel/flight hold expired    CANCELLED   the full chain       (Confirm refused after the commit
                                                                   decision: the payment authorisation
                                                                   is voided too)

The hold-expired trips carry a marker in their trip id that a fault rule matches (`match`); the others
fail for real, on the seeded catalogue and cards. The mix, the itineraries and the fault draws are
seeded (`--seed`); which call draws which fault still depends on timing.

It books the trips concurrently (bounded), waits until every one is terminal, reads every database
(coordinator/audit.py) and sums it all up per scenario. The demo passes when every trip ended as its
scenario expects, the audit finds no violation and no orphaned hold. Nothing here prints: the CLI
gets the events through a `DemoReporter` and formats them (coordinator/cli_format.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol

import grpc
from sqlalchemy.exc import SQLAlchemyError

from coordinator.audit import AuditReport, AuditSourceError, audit_databases
from coordinator.launcher import (
    COORDINATOR,
    PARTICIPANTS,
    SMTP_SINK,
    Launcher,
    LaunchError,
    MeshPlan,
    PlannedProcess,
    free_ports,
    mesh_plan,
    start_mesh,
)
from coordinator.saga import TRIP_SAGA
from services.kit.tls import aio_channel, client_tls
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

DEFAULT_TRIPS = 48
DEFAULT_CONCURRENCY = 8
DEFAULT_SEED = 2027
DEFAULT_TIMEOUT = 120.0  # seconds for every trip to become terminal
# Enough reserve attempts that the random faults (at most ~15% per call) practically never exhaust a
# budget: 0.15^8 is about 3e-7, so a trip's outcome is its scenario's, not the dice's.
RESERVE_ATTEMPTS = 8
BOOK_ATTEMPTS = 3  # BookTrip is idempotent by trip id: resend it if the coordinator is briefly unreachable
TERMINAL = frozenset(
    {common_pb.TRIP_STATE_CONFIRMED, common_pb.TRIP_STATE_CANCELLED, common_pb.TRIP_STATE_NEEDS_ATTENTION}
)
KEEP_ENV = ("TRIPMESH_LOG_FORMAT", "TRIPMESH_LOG_LEVEL")

# What was undone: the compensation paths of the saga.
PATH_NONE = "none"
PATH_FLIGHT = "flight"
PATH_HOTEL = "hotel"
PATH_FLIGHT_HOTEL = "flight+hotel"
PATH_FULL = "full chain"
PATHS = (PATH_NONE, PATH_FLIGHT, PATH_HOTEL, PATH_FLIGHT_HOTEL, PATH_FULL)

# Trip id markers the fault rules below match (Confirm carries only the reservation id, "<trip>/<part>").
HOTEL_HOLD_EXPIRED = "hotel-hold-expired"
FLIGHT_HOLD_EXPIRED = "flight-hold-expired"


def fault_rules() -> dict[str, list[dict[str, Any]]]:
    """TRIPMESH_<COMPONENT>_FAULTS for each faulted component. Latency-only rules come first: their
    delays add up, and the first failing rule that fires decides a call's error."""
    return {
        "flight": [
            {"method": "Reserve", "latency_ms": 10},
            {
                "method": "Confirm",
                "match": f"-{FLIGHT_HOLD_EXPIRED}/",
                "code": "FAILED_PRECONDITION",
                "reason": "HOLD_EXPIRED",
            },
        ],
        "hotel": [
            {"method": "Reserve", "latency_ms": 30},
            {"method": "Confirm", "latency_ms": 15},
            {
                "method": "Confirm",
                "match": f"-{HOTEL_HOLD_EXPIRED}/",
                "code": "FAILED_PRECONDITION",
                "reason": "HOLD_EXPIRED",
            },
            {"method": "Reserve", "error_rate": 0.15},
            {"method": "Cancel", "error_rate": 0.05, "when": "after"},
        ],
        "payment": [
            {"method": "Reserve", "latency_ms": 20},
            {"method": "Reserve", "error_rate": 0.10},
            {"method": "Reserve", "error_rate": 0.05, "when": "after"},
        ],
    }


# --- the scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Itinerary:
    outbound: str  # flight number out, e.g. "TM101"
    back: str  # flight number back
    hotels: tuple[str, ...]  # hotels at the destination


ITINERARIES = (
    Itinerary("TM101", "TM102", ("lis-alfama", "lis-chiado")),  # London -> Lisbon
    Itinerary("TM103", "TM104", ("lis-alfama", "lis-chiado")),
    Itinerary("TM102", "TM101", ("lon-southbank",)),  # Lisbon -> London
    Itinerary("TM111", "TM112", ("par-marais",)),  # London -> Paris
    Itinerary("TM121", "TM122", ("ams-jordaan",)),  # London -> Amsterdam
    Itinerary("TM141", "TM142", ("rom-trastevere",)),  # Paris -> Rome
    Itinerary("TM171", "TM172", ("vie-ringstrasse",)),  # Frankfurt -> Vienna
    Itinerary("TM181", "TM182", ("bcn-gotic",)),  # Frankfurt -> Barcelona
    Itinerary("TM191", "TM192", ("bcn-gotic",)),  # Madrid -> Barcelona
)
REGIONAL = Itinerary("TM401", "TM402", ("vie-ringstrasse",))  # Zurich -> Vienna, 8 business seats
LISBON = ITINERARIES[:2]  # two hotels to choose between
# A hotel id's prefix -> the city whose car fleet serves it (services/car/catalogue.py).
CITIES = {
    "lis": "Lisbon",
    "lon": "London",
    "par": "Paris",
    "ams": "Amsterdam",
    "rom": "Rome",
    "vie": "Vienna",
    "bcn": "Barcelona",
}
FIRST_DAY = date(2027, 3, 1)
LAST_DAY = date(2027, 4, 29)  # the last day with flights and the last night on sale
TRAVELLERS = (
    "Grace Hopper",
    "Alan Turing",
    "Katherine Johnson",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Frances Allen",
    "John Backus",
    "Radia Perlman",
    "Leslie Lamport",
)


@dataclass(frozen=True)
class Payer:
    customer_id: str
    payment_method_id: str
    name: str = ""  # empty: a traveller's name is drawn


LOAD = Payer("cust-load", "pm_load_visa")  # effectively unlimited credit: confirmed trips never run dry
DECLINED = Payer("cust-ada", "pm_ada_declined", "Ada Lovelace")  # the issuer declines every charge
BROKE = Payer("cust-bob", "pm_bob_mc", "Bob Marley")  # EUR 200 of credit, less than any trip with a hotel


@dataclass(frozen=True)
class Car:
    city: str
    car_class: car_pb.CarClass.ValueType
    pick_up: date
    drop_off: date


@dataclass(frozen=True)
class Trip:
    """The parts of a trip, before it becomes a request."""

    outbound_flight_id: str
    return_flight_id: str
    cabin: flight_pb.Cabin.ValueType
    passengers: int
    hotel_id: str = ""
    room_type: hotel_pb.RoomType.ValueType = hotel_pb.ROOM_TYPE_STANDARD
    rooms: int = 1
    check_in: date | None = None
    check_out: date | None = None
    seats: tuple[str, ...] = ()  # named seats, the same on both flights; none: the service seats the party
    car: Car | None = None


class Draw:
    """What a scenario draws from: the seeded dice, and the seats this plan has already named on each flight,
    so that two planned trips never name one seat (SEAT_TAKEN is not what any scenario is about)."""

    BACK_ROWS = range(34, 24, -1)  # economy on a mainline jet is rows 10-34; the service seats parties front first

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.named: dict[str, set[str]] = {}

    def seats(self, flight_ids: Sequence[str], count: int) -> tuple[str, ...]:
        """`count` economy seats side by side in one of the back rows, named on none of these flights yet;
        none when the back rows are full (the service then chooses)."""
        taken = set().union(*(self.named.get(f, set()) for f in flight_ids))
        for row in self.BACK_ROWS:
            free = [f"{row}{letter}" for letter in "ABCDEF" if f"{row}{letter}" not in taken]
            if len(free) >= count:
                chosen = tuple(free[:count])
                for flight_id in flight_ids:
                    self.named.setdefault(flight_id, set()).update(chosen)
                return chosen
        return ()


def _flight_id(number: str, day: date) -> str:
    return f"{number}-{day:%Y%m%d}"


def _moved(flight_id: str, days: int) -> str:
    """The same flight number `days` later: 'TM101-20270315', 2 -> 'TM101-20270317'."""
    number, _, day = flight_id.partition("-")
    return _flight_id(number, date(int(day[:4]), int(day[4:6]), int(day[6:])) + timedelta(days=days))


def _dates(rng: random.Random, *, min_nights: int = 2, max_nights: int = 7) -> tuple[date, date]:
    nights = rng.randint(min_nights, max_nights)
    first = FIRST_DAY + timedelta(days=rng.randrange((LAST_DAY - FIRST_DAY).days - nights + 1))
    return first, first + timedelta(days=nights)


def _holiday(
    rng: random.Random,
    *,
    itinerary: Itinerary | None = None,
    cabin: flight_pb.Cabin.ValueType | None = None,
    passengers: int | None = None,
    room_type: hotel_pb.RoomType.ValueType | None = None,
    rooms: int | None = None,
    hotel: bool = True,
) -> Trip:
    """A plausible round trip: random route, dates, party size, cabin and room, unless given.

    What is drawn stays light on the scarce inventory (a business party is at most 2, a deluxe booking
    one room, otherwise at most 2 standard rooms), so that only a scenario's deliberate failure refuses
    a trip, even when a few hundred trips share the catalogue.
    """
    route = itinerary or rng.choice(ITINERARIES)
    out, back = _dates(rng, min_nights=2 if hotel else 1)
    party = passengers if passengers is not None else rng.choice((1, 1, 2, 2, 2, 3, 4))
    seat = (
        cabin
        if cabin is not None
        else rng.choice((flight_pb.CABIN_ECONOMY,) * 4 + (flight_pb.CABIN_PREMIUM_ECONOMY, flight_pb.CABIN_BUSINESS))
    )
    if cabin is None and passengers is None and seat == flight_pb.CABIN_BUSINESS:
        party = min(party, 2)
    trip = Trip(_flight_id(route.outbound, out), _flight_id(route.back, back), seat, party)
    if not hotel:
        return trip
    room = (
        room_type
        if room_type is not None
        else rng.choice((hotel_pb.ROOM_TYPE_STANDARD,) * 3 + (hotel_pb.ROOM_TYPE_DELUXE,))
    )
    default_rooms = 1 if room != hotel_pb.ROOM_TYPE_STANDARD else min(2, (party + 1) // 2)
    return replace(
        trip,
        hotel_id=rng.choice(route.hotels),
        room_type=room,
        rooms=rooms if rooms is not None else default_rooms,
        check_in=out,
        check_out=back,
    )


def _with_car(draw: Draw, trip: Trip) -> Trip:
    """The trip with a car in its hotel's city for the stay (classes with a fleet to spare)."""
    assert trip.check_in is not None and trip.check_out is not None, "a car goes with a stay"
    car_class = draw.rng.choice((car_pb.CAR_CLASS_ECONOMY, car_pb.CAR_CLASS_COMPACT, car_pb.CAR_CLASS_MIDSIZE))
    return replace(trip, car=Car(CITIES[trip.hotel_id[:3]], car_class, trip.check_in, trip.check_out))


def _named(draw: Draw, trip: Trip) -> Trip:
    return replace(trip, seats=draw.seats((trip.outbound_flight_id, trip.return_flight_id), trip.passengers))


def _economy(draw: Draw, passengers: tuple[int, ...], **given: Any) -> Trip:
    return _holiday(draw.rng, cabin=flight_pb.CABIN_ECONOMY, passengers=draw.rng.choice(passengers), **given)


# What is done with a trip once it is CONFIRMED: a change (without its trip id, which the plan adds) or a
# cancellation.
FollowUp = trip_pb.ChangeTripRequest | trip_pb.CancelTripRequest


def _new_dates(draw: Draw, trip: Trip) -> FollowUp:
    """The whole trip one to three days earlier or later: new flights, the stay and the car moved with it."""
    assert trip.check_in is not None and trip.check_out is not None
    shifts = [d for d in (-3, -2, -1, 1, 2, 3) if trip.check_in + timedelta(days=d) >= FIRST_DAY]
    days = draw.rng.choice([d for d in shifts if trip.check_out + timedelta(days=d) <= LAST_DAY])
    step = timedelta(days=days)
    moved = replace(
        trip,
        outbound_flight_id=_moved(trip.outbound_flight_id, days),
        return_flight_id=_moved(trip.return_flight_id, days),
        check_in=trip.check_in + step,
        check_out=trip.check_out + step,
        car=None
        if trip.car is None
        else replace(trip.car, pick_up=trip.car.pick_up + step, drop_off=trip.car.drop_off + step),
    )
    change = trip_pb.ChangeTripRequest(change_id="new-dates", flight=_flight_part(moved), hotel=_hotel_part(moved))
    if moved.car is not None:
        change.car.CopyFrom(_car_part(moved.car))
    return change


def _other_hotel(draw: Draw, trip: Trip) -> FollowUp:
    other = next(h for route in LISBON for h in route.hotels if h != trip.hotel_id)
    return trip_pb.ChangeTripRequest(change_id="other-hotel", hotel=_hotel_part(replace(trip, hotel_id=other)))


def _car_in_or_out(draw: Draw, trip: Trip) -> FollowUp:
    """Drop the car a trip has; add one to a trip without."""
    if trip.car is not None:
        return trip_pb.ChangeTripRequest(change_id="drop-car", drop_car=True)
    car = _with_car(draw, trip).car
    assert car is not None
    return trip_pb.ChangeTripRequest(change_id="add-car", car=_car_part(car))


def _other_seats(draw: Draw, trip: Trip) -> FollowUp:
    return trip_pb.ChangeTripRequest(change_id="other-seats", flight=_flight_part(_named(draw, trip)))


def _cancel(draw: Draw, trip: Trip) -> FollowUp:
    return trip_pb.CancelTripRequest()


def _impossible(draw: Draw, trip: Trip) -> FollowUp:
    """A change that cannot be had: 9 in business on the 8-seat regional jet, or a hotel nobody has."""
    if draw.rng.random() < 0.5:
        assert trip.check_in is not None and trip.check_out is not None
        flight = trip_pb.TripFlight(
            outbound_flight_id=_flight_id(REGIONAL.outbound, trip.check_in),
            return_flight_id=_flight_id(REGIONAL.back, trip.check_out),
            cabin=flight_pb.CABIN_BUSINESS,
            passenger_count=9,
        )
        return trip_pb.ChangeTripRequest(change_id="sold-out-flight", flight=flight)
    return trip_pb.ChangeTripRequest(
        change_id="unknown-hotel", hotel=_hotel_part(replace(trip, hotel_id="atlantis-deep"))
    )


@dataclass(frozen=True)
class Scenario:
    key: str  # in the trip id: "card-declined"
    title: str  # for people: "card declined"
    expect: str  # the trip state it must end in: "CONFIRMED" or "CANCELLED"
    path: str  # the compensation path its booking must take (PATHS)
    weight: int  # its share of the mix
    payer: Payer
    build: Callable[[Draw], Trip]
    # Once the trip is CONFIRMED: the change or cancellation sent, and how it must end (TripChangeOutcome
    # without its prefix: "APPLIED", "REVERTED", "CANCELLED").
    then: Callable[[Draw, Trip], FollowUp] | None = None
    change: str = ""
    side_by_side: bool = False  # the party's seats, which it did not name, must be in one row, adjacent


def _then(
    key: str, title: str, build: Callable[[Draw], Trip], then: Callable[[Draw, Trip], FollowUp], end: str = "APPLIED"
) -> Scenario:
    """A trip that must confirm, then is changed or cancelled; `end` is how that must end."""
    expect = "CANCELLED" if end == "CANCELLED" else "CONFIRMED"
    return Scenario(key, title, expect, PATH_NONE, 1, LOAD, build, then=then, change=end)


def _maybe_car(draw: Draw) -> Trip:
    """A holiday, with a car half the time."""
    trip = _holiday(draw.rng)
    return _with_car(draw, trip) if draw.rng.random() < 0.5 else trip


SCENARIOS = (
    Scenario("round-trip", "round trip + hotel", "CONFIRMED", PATH_NONE, 4, LOAD, lambda d: _holiday(d.rng)),
    Scenario("flight-only", "flight only", "CONFIRMED", PATH_NONE, 2, LOAD, lambda d: _holiday(d.rng, hotel=False)),
    Scenario(
        "car-seats",
        "car + named seats",
        "CONFIRMED",
        PATH_NONE,
        1,
        LOAD,
        lambda d: _named(d, _with_car(d, _economy(d, (1, 2, 2, 3)))),
    ),
    Scenario(
        "car-party",
        "car + party seated side by side",
        "CONFIRMED",
        PATH_NONE,
        1,
        LOAD,
        lambda d: _with_car(d, _economy(d, (3, 4))),
        side_by_side=True,
    ),
    Scenario(
        "hotel-sold-out",
        "hotel sold out (3 suites)",
        "CANCELLED",
        PATH_FLIGHT,
        1,
        LOAD,
        lambda d: _holiday(d.rng, room_type=hotel_pb.ROOM_TYPE_SUITE, rooms=3),
    ),
    Scenario(
        "flight-sold-out",
        "flight sold out (9 in business)",
        "CANCELLED",
        PATH_HOTEL,
        1,
        LOAD,
        lambda d: _holiday(d.rng, itinerary=REGIONAL, cabin=flight_pb.CABIN_BUSINESS, passengers=9, rooms=1),
    ),
    Scenario("card-declined", "card declined", "CANCELLED", PATH_FLIGHT_HOTEL, 1, DECLINED, lambda d: _holiday(d.rng)),
    Scenario(
        "no-funds",
        "insufficient funds",
        "CANCELLED",
        PATH_FLIGHT_HOTEL,
        1,
        BROKE,
        lambda d: _holiday(d.rng, cabin=flight_pb.CABIN_ECONOMY, passengers=1, rooms=1),
    ),
    Scenario(
        HOTEL_HOLD_EXPIRED,
        "hotel hold expired at confirm",
        "CANCELLED",
        PATH_FULL,
        1,
        LOAD,
        lambda d: _holiday(d.rng),
    ),
    Scenario(
        FLIGHT_HOLD_EXPIRED,
        "flight hold expired at confirm",
        "CANCELLED",
        PATH_FULL,
        1,
        LOAD,
        lambda d: _holiday(d.rng),
    ),
    _then("new-dates", "changed: new dates", _maybe_car, _new_dates),
    _then(
        "other-hotel", "changed: another hotel", lambda d: _holiday(d.rng, itinerary=d.rng.choice(LISBON)), _other_hotel
    ),
    _then("car-in-out", "changed: car added or dropped", _maybe_car, _car_in_or_out),
    _then("other-seats", "changed: other seats", lambda d: _named(d, _economy(d, (1, 2))), _other_seats),
    _then(
        "change-refused", "change refused (sold out, no such hotel)", lambda d: _holiday(d.rng), _impossible, "REVERTED"
    ),
    _then("cancelled", "cancelled after booking", _maybe_car, _cancel, "CANCELLED"),
)


@dataclass(frozen=True)
class PlannedTrip:
    scenario: Scenario
    request: trip_pb.BookTripRequest
    then: FollowUp | None = None  # sent once the trip is CONFIRMED, with its trip id

    @property
    def trip_id(self) -> str:
        return self.request.trip_id

    @property
    def change_id(self) -> str:
        """The id the trip records the follow-up under (a cancellation's is "cancel")."""
        return self.then.change_id if isinstance(self.then, trip_pb.ChangeTripRequest) else "cancel"


def scenario_counts(total: int) -> dict[str, int]:
    """How many trips of each scenario: by weight (largest remainder), every scenario at least once
    when there are enough trips for all of them."""
    weights = {s.key: s.weight for s in SCENARIOS}
    whole = sum(weights.values())
    exact = {key: total * w / whole for key, w in weights.items()}
    counts = {key: math.floor(x) for key, x in exact.items()}
    by_remainder = sorted(weights, key=lambda key: (-(exact[key] - counts[key]), list(weights).index(key)))
    for key in by_remainder[: total - sum(counts.values())]:
        counts[key] += 1
    if total >= len(SCENARIOS):
        for key in weights:
            while counts[key] == 0:
                richest = max(counts, key=lambda k: counts[k])
                counts[richest] -= 1
                counts[key] += 1
    return counts


def plan_trips(total: int, seed: int, run: str) -> list[PlannedTrip]:
    """The demo's bookings, in the order they are sent: a shuffled mix, all drawn from `seed`.

    Trip ids are `demo-<run>-<nnn>-<scenario>`: unique per run (so a reused var dir books anew) and
    carrying the scenario's marker the fault rules match.
    """
    rng = random.Random(seed)
    draw = Draw(rng)
    counts = scenario_counts(total)
    order = [s for s in SCENARIOS for _ in range(counts[s.key])]
    rng.shuffle(order)
    planned = []
    for number, scenario in enumerate(order, start=1):
        trip = scenario.build(draw)
        name = scenario.payer.name or rng.choice(TRAVELLERS)
        email = name.lower().replace(" ", ".") + "@example.com"
        request = trip_pb.BookTripRequest(
            trip_id=f"demo-{run}-{number:03d}-{scenario.key}",
            customer=trip_pb.Customer(customer_id=scenario.payer.customer_id, email=email, name=name),
            flight=_flight_part(trip),
            payment_method_id=scenario.payer.payment_method_id,
            currency_code="EUR",
        )
        if trip.hotel_id:
            request.hotel.CopyFrom(_hotel_part(trip))
        if trip.car is not None:
            request.car.CopyFrom(_car_part(trip.car))
        then = scenario.then(draw, trip) if scenario.then is not None else None
        if then is not None:
            then.trip_id = request.trip_id
        planned.append(PlannedTrip(scenario, request, then))
    return planned


def _flight_part(trip: Trip) -> trip_pb.TripFlight:
    return trip_pb.TripFlight(
        outbound_flight_id=trip.outbound_flight_id,
        return_flight_id=trip.return_flight_id,
        cabin=trip.cabin,
        passenger_count=trip.passengers,
        seats=trip.seats,
    )


def _hotel_part(trip: Trip) -> trip_pb.TripHotel:
    assert trip.check_in is not None and trip.check_out is not None, "a hotel needs its dates"
    return trip_pb.TripHotel(
        hotel_id=trip.hotel_id,
        room_type=trip.room_type,
        check_in=_date(trip.check_in),
        check_out=_date(trip.check_out),
        room_count=trip.rooms,
    )


def _car_part(car: Car) -> trip_pb.TripCar:
    return trip_pb.TripCar(
        city=car.city, car_class=car.car_class, pick_up_date=_date(car.pick_up), drop_off_date=_date(car.drop_off)
    )


def _date(day: date) -> common_pb.Date:
    return common_pb.Date(year=day.year, month=day.month, day=day.day)


# --- reading outcomes -------------------------------------------------------------------------------


def _cancel_groups(trip: trip_pb.Trip) -> list[list[str]]:
    """The participants whose cancel ran, grouped as the saga runs them (its reserve groups, reversed)."""
    cancelled = {s.participant for s in trip.steps if s.action == trip_pb.STEP_ACTION_CANCEL}
    groups = [[p for p in group if p in cancelled] for group in reversed(TRIP_SAGA.reserve_groups)]
    return [g for g in groups if g]


def compensation_steps(trip: trip_pb.Trip) -> str:
    """What the compensation ran, in order, parallel steps joined: 'payment+notify, then flight+hotel'."""
    groups = _cancel_groups(trip)
    return ", then ".join("+".join(g) for g in groups) if groups else "-"


def compensation_path(trip: trip_pb.Trip) -> str:
    """Which compensation path a trip took (PATHS): what of value was undone. Notify (auxiliary) only
    ever discards a staged e-mail, so it does not make a path of its own."""
    if trip.changes:
        return PATH_NONE  # it was booked (a change or cancellation comes only after): nothing was compensated
    undone = {p for g in _cancel_groups(trip) for p in g} - TRIP_SAGA.auxiliary
    if "payment" in undone:
        return PATH_FULL
    if undone == {"flight", "hotel"}:
        return PATH_FLIGHT_HOTEL
    if undone == {"flight"}:
        return PATH_FLIGHT
    if undone == {"hotel"}:
        return PATH_HOTEL
    return PATH_NONE if not undone else "+".join(sorted(undone))


def stands_otherwise(planned: PlannedTrip, trip: trip_pb.Trip) -> str:
    """How the trip as it now stands differs from what its scenario leads to (empty: it does not): an
    applied change's parts are the booked ones, a reverted change left the booking exactly as it was, a
    party that named no seats sits side by side, named seats are the ones held."""
    booked = trip.booked
    change = planned.then
    if planned.scenario.change == "REVERTED" and booked != planned.request:
        return "the reverted change altered the booking"
    if planned.scenario.change == "APPLIED" and isinstance(change, trip_pb.ChangeTripRequest):
        for part in ("flight", "hotel", "car"):
            if change.HasField(part) and getattr(booked, part) != getattr(change, part):
                return f"the applied change's {part} is not what the trip holds"
        if (change.drop_car and booked.HasField("car")) or (change.drop_hotel and booked.HasField("hotel")):
            return "the applied change dropped a part the trip still holds"
    if trip.state != common_pb.TRIP_STATE_CONFIRMED:
        return ""
    seats = {
        s.flight_id: list(s.seats)
        for r in trip.reservations
        if r.participant == "flight" and r.status == common_pb.RESERVATION_STATUS_CONFIRMED
        for s in r.seats
    }
    named = sorted(booked.flight.seats)
    for flight_id, held in seats.items():
        if named and sorted(held) != named:
            return f"holds seats {held} on {flight_id}, not the named {named}"
        if planned.scenario.side_by_side and not _side_by_side(held):
            return f"the party is not seated side by side on {flight_id}: {held}"
    return ""


def _side_by_side(seats: Sequence[str]) -> bool:
    """One row, adjacent letters ("14B", "14C", "14D")."""
    rows = {s[:-1] for s in seats}
    letters = sorted(ord(s[-1]) for s in seats)
    return len(rows) == 1 and letters == list(range(letters[0], letters[0] + len(letters)))


def _millis(ts: Any) -> int:
    return int(ts.seconds) * 1000 + int(ts.nanos) // 1_000_000


@dataclass(frozen=True)
class TripResult:
    planned: PlannedTrip
    trip: trip_pb.Trip | None  # the trip as last read; None if it could not be booked
    error: str = ""  # why it could not be booked

    @property
    def state(self) -> str:
        if self.trip is None:
            return "NOT BOOKED"
        return common_pb.TripState.Name(self.trip.state).removeprefix("TRIP_STATE_")

    @property
    def terminal(self) -> bool:
        """In a final state, with no change or cancellation still under way."""
        return (
            self.trip is not None
            and self.trip.state in TERMINAL
            and all(c.outcome != trip_pb.TRIP_CHANGE_OUTCOME_IN_PROGRESS for c in self.trip.changes)
        )

    @property
    def change(self) -> str:
        """How the planned change or cancellation ended: "APPLIED", "REVERTED", "CANCELLED" ("IN_PROGRESS"
        while under way); empty when none was planned or it was never accepted."""
        if self.trip is None or self.planned.then is None:
            return ""
        made = [c for c in self.trip.changes if c.change_id == self.planned.change_id]
        return trip_pb.TripChangeOutcome.Name(made[-1].outcome).removeprefix("TRIP_CHANGE_OUTCOME_") if made else ""

    @property
    def path(self) -> str:
        return compensation_path(self.trip) if self.trip is not None else PATH_NONE

    @property
    def steps(self) -> str:
        return compensation_steps(self.trip) if self.trip is not None else "-"

    @property
    def latency_ms(self) -> int | None:
        """From acceptance to the terminal state, as the step log timed it."""
        if not self.terminal or self.trip is None:
            return None
        return _millis(self.trip.update_time) - _millis(self.trip.create_time)

    @property
    def retries(self) -> int:
        """Calls sent again after a transient failure or a lost reply."""
        return sum(max(0, s.attempts - 1) for s in self.trip.steps) if self.trip is not None else 0

    @property
    def as_expected(self) -> bool:
        scenario = self.planned.scenario
        if self.state != scenario.expect or self.path != scenario.path or self.change != scenario.change:
            return False
        return self.trip is None or not stands_otherwise(self.planned, self.trip)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (p95 of 20 values is the 19th smallest); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True)
class ScenarioRow:
    """One line of the outcome table."""

    title: str
    expect: str
    trips: int
    states: Counter[str]
    paths: Counter[str]  # the compensation paths taken -> how many trips
    steps: Counter[str]  # the compensation steps seen -> how many trips
    changes: Counter[str]  # how the changes and cancellations after booking ended -> how many trips
    retries: int
    median_ms: float | None
    p95_ms: float | None
    surprises: int  # trips that ended otherwise than expected

    @classmethod
    def of(cls, title: str, expect: str, results: Sequence[TripResult]) -> ScenarioRow:
        latencies = [r.latency_ms for r in results if r.latency_ms is not None]
        return cls(
            title=title,
            expect=expect,
            trips=len(results),
            states=Counter(r.state for r in results),
            paths=Counter(r.path for r in results if r.terminal),
            steps=Counter(r.steps for r in results),
            changes=Counter(r.change for r in results if r.change),
            retries=sum(r.retries for r in results),
            median_ms=statistics.median(latencies) if latencies else None,
            p95_ms=percentile(latencies, 0.95),
            surprises=sum(not r.as_expected for r in results),
        )


@dataclass(frozen=True)
class PathRow:
    path: str
    trips: int
    steps: str  # the most common compensation steps of the path


@dataclass(frozen=True)
class DemoSummary:
    results: list[TripResult]
    rows: list[ScenarioRow]
    total: ScenarioRow
    paths: list[PathRow]
    audit: AuditReport
    seconds: float  # from the first BookTrip to the last trip terminal
    problems: list[str]  # why the demo failed; empty when it passed

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def surprises(self) -> list[TripResult]:
        """The trips that ended otherwise than their scenario expects."""
        return [r for r in self.results if not r.as_expected]

    @property
    def paths_seen(self) -> list[str]:
        return [p.path for p in self.paths if p.trips]


def summarize(results: Sequence[TripResult], report: AuditReport, seconds: float) -> DemoSummary:
    by_scenario = {s.key: [r for r in results if r.planned.scenario.key == s.key] for s in SCENARIOS}
    rows = [ScenarioRow.of(s.title, s.expect, by_scenario[s.key]) for s in SCENARIOS if by_scenario[s.key]]
    paths = []
    for path in PATHS:
        taken = [r for r in results if r.terminal and r.path == path]
        if taken:
            steps = Counter(r.steps for r in taken).most_common(1)[0][0]
            paths.append(PathRow(path, len(taken), steps))
    problems = []
    not_booked = [r for r in results if r.trip is None]
    if not_booked:
        problems.append(f"{len(not_booked)} trips could not be booked ({not_booked[0].error})")
    in_flight = [r for r in results if r.trip is not None and not r.terminal]
    if in_flight:
        problems.append(f"{len(in_flight)} trips were still in flight at the deadline")
    for row in rows:
        if row.surprises:
            problems.append(f"{row.surprises} of {row.trips} '{row.title}' trips did not end as expected")
    if report.orphaned_holds:
        problems.append(f"{report.orphaned_holds} orphaned holds")
    if report.violations:
        problems.append(f"{len(report.violations)} invariant violations")
    return DemoSummary(
        results=list(results),
        rows=rows,
        total=ScenarioRow.of("all", "", results),
        paths=paths,
        audit=report,
        seconds=seconds,
        problems=problems,
    )


# --- booking ---------------------------------------------------------------------------------------


class Interrupted(Exception):
    """The demo was asked to stop (Ctrl-C, SIGTERM)."""


async def _send(call: Callable[[float], Any], deadline: float) -> tuple[Any, str]:
    """Send an idempotent call (BookTrip by trip id, ChangeTrip by change id, CancelTrip), again while
    the coordinator is briefly unreachable: (its response, "") or (None, why it failed)."""
    error = ""
    for attempt in range(1, BOOK_ATTEMPTS + 1):
        try:
            return await call(max(1.0, deadline - time.monotonic())), ""
        except grpc.aio.AioRpcError as failure:
            error = f"{failure.code().name}: {failure.details()}"
            if failure.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                break
            await asyncio.sleep(0.2 * attempt)
    return None, error


async def _book(stub: trip_grpc.TripCoordinatorStub, planned: PlannedTrip, deadline: float) -> TripResult:
    response, error = await _send(lambda timeout: stub.BookTrip(planned.request, timeout=timeout), deadline)
    return TripResult(planned, response.trip if response is not None else None, error)


async def _follow_up(stub: trip_grpc.TripCoordinatorStub, booked: TripResult, deadline: float) -> TripResult:
    """Change or cancel a confirmed trip as its scenario says."""
    then = booked.planned.then
    if isinstance(then, trip_pb.ChangeTripRequest):
        response, error = await _send(lambda timeout: stub.ChangeTrip(then, timeout=timeout), deadline)
    else:
        response, error = await _send(lambda timeout: stub.CancelTrip(then, timeout=timeout), deadline)
    return TripResult(booked.planned, response.trip if response is not None else booked.trip, error)


async def _settle(
    stub: trip_grpc.TripCoordinatorStub, result: TripResult, deadline: float, poll: float = 0.1
) -> TripResult:
    """Read the trip until it is terminal or the deadline passes."""
    while result.trip is not None and not result.terminal and time.monotonic() < deadline:
        await asyncio.sleep(poll)
        try:
            response = await stub.GetTrip(trip_pb.GetTripRequest(trip_id=result.planned.trip_id), timeout=10)
        except grpc.aio.AioRpcError:
            continue
        result = TripResult(result.planned, response.trip)
    return result


async def book_all(
    address: str,
    planned: Sequence[PlannedTrip],
    *,
    concurrency: int,
    seconds: float,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> list[TripResult]:
    """Book every trip, at most `concurrency` at once, and wait until each is terminal (up to `seconds`
    in all). Raises Interrupted when `stop` is set."""
    deadline = time.monotonic() + seconds
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async with aio_channel(address, client_tls()) as channel:
        stub = trip_grpc.TripCoordinatorStub(channel)

        async def one(trip: PlannedTrip) -> TripResult:
            nonlocal done
            async with gate:
                result = await _book(stub, trip, deadline)
            result = await _settle(stub, result, deadline)
            if (
                trip.then is not None
                and result.trip is not None
                and result.trip.state == common_pb.TRIP_STATE_CONFIRMED
            ):
                async with gate:
                    result = await _follow_up(stub, result, deadline)
                result = await _settle(stub, result, deadline)
            done += 1
            if progress is not None:
                progress(done, len(planned))
            return result

        work = asyncio.ensure_future(asyncio.gather(*(one(t) for t in planned)))
        while not work.done():
            await asyncio.wait([work], timeout=0.1)
            if stop is not None and stop.is_set():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                raise Interrupted
        return list(work.result())


# --- the demo as a whole ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    trips: int = DEFAULT_TRIPS
    seed: int = DEFAULT_SEED
    concurrency: int = DEFAULT_CONCURRENCY
    var_dir: str | None = None  # None: a fresh temporary directory, removed after a passing run
    keep_running: bool = False
    timeout: float = DEFAULT_TIMEOUT
    startup_timeout: float = 60.0
    stop_grace: float = 10.0


@dataclass(frozen=True)
class DemoSetup:
    options: DemoOptions
    var_dir: Path
    temporary: bool  # the demo created var_dir and may remove it
    run: str  # the trip id tag of this run
    plan: MeshPlan
    env: dict[str, str]  # the children's whole environment
    faults: dict[str, list[dict[str, Any]]]
    planned: list[PlannedTrip]

    @property
    def coordinator(self) -> PlannedProcess:
        return next(p for p in self.plan.processes if p.component is COORDINATOR)

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "logs"

    def databases(self) -> dict[str, str]:
        return {p.component.name: p.data for p in self.plan.processes if p.component is not SMTP_SINK}


def demo_env(
    environ: Mapping[str, str], ports: Mapping[str, int], var_dir: Path, seed: int, faults: Mapping[str, Any]
) -> dict[str, str]:
    """The children's environment: the caller's, without any TRIPMESH_* setting of theirs (a developer's
    database URL or port must not leak into the demo's mesh) but the log format, plus the demo's own:
    ports, var dir, fault rules and seed, a larger reserve budget, a quick outbox."""
    env = {k: v for k, v in environ.items() if not k.startswith("TRIPMESH_") or k in KEEP_ENV}
    components = (SMTP_SINK, *PARTICIPANTS, COORDINATOR)
    env.update({f"TRIPMESH_{c.prefix}_PORT": str(ports[c.name]) for c in components})
    env.update({f"TRIPMESH_{name.upper()}_FAULTS": json.dumps(rules) for name, rules in faults.items()})
    env["TRIPMESH_VAR_DIR"] = str(var_dir)
    env["TRIPMESH_FAULT_SEED"] = str(seed)
    env["TRIPMESH_COORDINATOR_RESERVE_ATTEMPTS"] = str(RESERVE_ATTEMPTS)
    env["TRIPMESH_NOTIFY_OUTBOX_INTERVAL_SECONDS"] = "0.2"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def prepare(options: DemoOptions, environ: Mapping[str, str] | None = None) -> DemoSetup:
    """Choose the var dir and free ports, write nothing else yet; plan the mesh and the trips."""
    environ = os.environ if environ is None else environ
    temporary = options.var_dir is None
    var_dir = Path(tempfile.mkdtemp(prefix="tripmesh-demo-") if options.var_dir is None else options.var_dir)
    (var_dir / "mail").mkdir(parents=True, exist_ok=True)
    components = (SMTP_SINK, *PARTICIPANTS, COORDINATOR)
    free = free_ports(len(components), avoid=[c.default_port for c in components])
    ports = {c.name: port for c, port in zip(components, free, strict=True)}
    faults = fault_rules()
    env = demo_env(environ, ports, var_dir, options.seed, faults)
    plan = mesh_plan(env, var_dir=str(var_dir))
    run = secrets.token_hex(2)
    return DemoSetup(
        options=options,
        var_dir=var_dir,
        temporary=temporary,
        run=run,
        plan=plan,
        env=env,
        faults=faults,
        planned=plan_trips(options.trips, options.seed, run),
    )


class DemoReporter(Protocol):
    """What the demo tells its user, as it happens (the CLI prints it)."""

    def starting(self, setup: DemoSetup) -> None: ...

    def mesh_up(self, setup: DemoSetup, launcher: Launcher, seconds: float) -> None: ...

    def progress(self, done: int, total: int) -> None: ...

    def finished(self, setup: DemoSetup, summary: DemoSummary) -> None: ...

    def keeping(self, setup: DemoSetup, launcher: Launcher) -> None: ...

    def stopped(self, setup: DemoSetup, codes: dict[str, int], removed: bool) -> None: ...

    def failed(self, message: str) -> None: ...


@dataclass
class DemoRun:
    """Runs the demo start to end; `stop` (set by a signal handler) ends it early, or ends the wait of
    --keep-running."""

    setup: DemoSetup
    reporter: DemoReporter
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> int:
        """0 when the demo passed, 1 when it did not, 130 when interrupted."""
        setup, options = self.setup, self.setup.options
        launcher = Launcher(base_env=setup.env, log_dir=setup.log_dir)
        code = 1
        try:
            self.reporter.starting(setup)
            started = time.monotonic()
            start_mesh(launcher, setup.plan, timeout=options.startup_timeout, cancel=self.stop)
            self.reporter.mesh_up(setup, launcher, time.monotonic() - started)
            summary = asyncio.run(self._book_and_audit())
            self.reporter.finished(setup, summary)
            code = 0 if summary.ok else 1
            if options.keep_running:
                self.reporter.keeping(setup, launcher)
                self._wait(launcher)
        except Interrupted:
            self.reporter.failed("interrupted; stopping the mesh")
            code = 130
        except LaunchError as error:
            self.reporter.failed(f"{error}; the logs are under {setup.log_dir}")
            code = 130 if self.stop.is_set() else 1
        except (AuditSourceError, SQLAlchemyError) as error:
            self.reporter.failed(f"the audit could not read the databases: {error}")
        finally:
            codes = launcher.stop_all(grace=options.stop_grace)
            removed = setup.temporary and code in (0, 130)
            if removed:
                shutil.rmtree(setup.var_dir, ignore_errors=True)
            self.reporter.stopped(setup, codes, removed)
        return code

    async def _book_and_audit(self) -> DemoSummary:
        options = self.setup.options
        started = time.monotonic()
        results = await book_all(
            self.setup.coordinator.address,
            self.setup.planned,
            concurrency=options.concurrency,
            seconds=options.timeout,
            progress=self.reporter.progress,
            stop=self.stop,
        )
        seconds = time.monotonic() - started
        report = await audit_databases(self.setup.databases())
        return summarize(results, report, seconds)

    def _wait(self, launcher: Launcher) -> None:
        while not self.stop.wait(0.5):
            dead = launcher.exited()
            if dead:
                raise LaunchError(f"{dead[0].describe_exit()} unexpectedly")
