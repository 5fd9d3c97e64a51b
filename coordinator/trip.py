"""The trip aggregate as the coordinator keeps it: the request, its state and its steps (pure, no I/O)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class TripState(StrEnum):
    PENDING = "PENDING"
    RESERVING = "RESERVING"
    CONFIRMING = "CONFIRMING"
    CONFIRMED = "CONFIRMED"
    COMPENSATING = "COMPENSATING"
    CANCELLED = "CANCELLED"
    NEEDS_ATTENTION = "NEEDS_ATTENTION"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({TripState.CONFIRMED, TripState.CANCELLED, TripState.NEEDS_ATTENTION})


class StepStatus(StrEnum):
    STARTED = "STARTED"  # intent durable, outcome not known (yet)
    SUCCEEDED = "SUCCEEDED"
    REFUSED = "REFUSED"  # a refusal: never retried
    FAILED = "FAILED"  # retry budget spent; the effect may or may not have happened


class Action(StrEnum):
    RESERVE = "reserve"
    CONFIRM = "confirm"
    CANCEL = "cancel"


@dataclass(frozen=True)
class FlightPart:
    outbound_flight_id: str
    return_flight_id: str
    cabin: int
    passenger_count: int
    seats: tuple[str, ...] = ()  # named seats ("12A"), one per passenger; empty: the flight assigns them


@dataclass(frozen=True)
class HotelPart:
    hotel_id: str
    room_type: int
    check_in: str  # ISO date
    check_out: str
    room_count: int


@dataclass(frozen=True)
class CarPart:
    city: str
    car_class: int
    pick_up: str  # ISO date
    drop_off: str


@dataclass(frozen=True)
class TripRequest:
    trip_id: str
    customer_id: str
    email: str
    name: str
    flight: FlightPart
    hotel: HotelPart | None
    payment_method_id: str
    currency: str
    car: CarPart | None = None

    def to_json(self) -> dict[str, Any]:
        """As stored in the step log; a trip without a car is stored (and fingerprinted) as before cars."""
        data = asdict(self)
        if self.car is None:
            del data["car"]
        if self.flight.seats:
            data["flight"]["seats"] = list(self.flight.seats)
        else:
            del data["flight"]["seats"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TripRequest:
        hotel, car = data.get("hotel"), data.get("car")
        return cls(
            **{k: v for k, v in data.items() if k not in ("flight", "hotel", "car")},
            flight=FlightPart(**{**data["flight"], "seats": tuple(data["flight"].get("seats", ()))}),
            hotel=HotelPart(**hotel) if hotel else None,
            car=CarPart(**car) if car else None,
        )

    def fingerprint(self) -> str:
        body = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def has_part(self, participant: str) -> bool:
        """Whether the request carries the part named after this participant (`hotel`, ...): what an
        optional part of the saga (coordinator/saga.py) is skipped by."""
        return getattr(self, participant, None) is not None


@dataclass
class Step:
    """One participant call as the step log records it."""

    name: str  # "flight.reserve"
    seq: int
    status: StepStatus
    attempts: int
    started_at: datetime
    finished_at: datetime | None = None
    error_code: str = ""
    error_reason: str = ""
    error_message: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def participant(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def action(self) -> Action:
        return Action(self.name.split(".", 1)[1])


@dataclass
class Trip:
    request: TripRequest
    state: TripState
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime
    definition_version: int
    failure_reason: str = ""
    steps: dict[str, Step] = field(default_factory=dict)
    owner: str = ""  # the replica whose lease this is (coordinator/lease.py)
    fence: int = 0  # the lease's fencing token: every step-log write for the trip carries it

    @property
    def trip_id(self) -> str:
        return self.request.trip_id

    def step(self, name: str) -> Step | None:
        return self.steps.get(name)

    def status_of(self, name: str) -> StepStatus | None:
        step = self.steps.get(name)
        return None if step is None else step.status

    def ordered_steps(self) -> list[Step]:
        return sorted(self.steps.values(), key=lambda s: s.seq)

    def price_of(self, participant: str) -> int | None:
        step = self.steps.get(f"{participant}.reserve")
        if step is None or step.status is not StepStatus.SUCCEEDED:
            return None
        return int(step.result.get("price_minor", 0))
