"""The trip aggregate as the coordinator keeps it: the request, its state and its steps (pure, no I/O)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import date, datetime
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
    # A booked trip being changed or cancelled (coordinator/operations.py).
    CHANGING = "CHANGING"
    CHANGE_CONFIRMING = "CHANGE_CONFIRMING"
    CHANGE_REVERTING = "CHANGE_REVERTING"
    CANCELLING = "CANCELLING"

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


def step_name(participant: str, action: Action, revision: int = 1) -> str:
    """ "flight.reserve" for the booking's reservations; "flight.reserve@2" for those a change or a
    cancellation of the booked trip (revision 2, 3, ...) makes."""
    name = f"{participant}.{action.value}"
    return name if revision == 1 else f"{name}@{revision}"


def parse_step_name(name: str) -> tuple[str, Action, int]:
    """(participant, action, revision) of a step name made by `step_name`."""
    base, _, revision = name.partition("@")
    participant, action = base.split(".", 1)
    return participant, Action(action), int(revision) if revision else 1


FLIGHT_ID = re.compile(r"^[A-Z0-9]{2,8}-(\d{4})(\d{2})(\d{2})$")


def flight_date(flight_id: str) -> date | None:
    """The date a flight id names ("TM101-20270315": 2027-03-15), or None if it names none."""
    match = FLIGHT_ID.match(flight_id)
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def _intern(part: object, *names: str) -> None:
    """Share the strings many trips repeat (catalogue ids, dates, the customer's): one copy each, however
    many trips are in flight (a frozen dataclass, so set through object.__setattr__)."""
    for name in names:
        object.__setattr__(part, name, sys.intern(getattr(part, name)))


@dataclass(frozen=True, slots=True)
class FlightPart:
    outbound_flight_id: str
    return_flight_id: str
    cabin: int
    passenger_count: int
    seats: tuple[str, ...] = ()  # named seats ("12A"), one per passenger; empty: the flight assigns them

    def __post_init__(self) -> None:
        _intern(self, "outbound_flight_id", "return_flight_id")


@dataclass(frozen=True, slots=True)
class HotelPart:
    hotel_id: str
    room_type: int
    check_in: str  # ISO date
    check_out: str
    room_count: int

    def __post_init__(self) -> None:
        _intern(self, "hotel_id", "check_in", "check_out")


@dataclass(frozen=True, slots=True)
class CarPart:
    city: str
    car_class: int
    pick_up: str  # ISO date
    drop_off: str


@dataclass(frozen=True, slots=True)
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

    def __post_init__(self) -> None:
        _intern(self, "customer_id", "email", "name", "payment_method_id", "currency")

    def to_json(self) -> dict[str, Any]:
        """As stored in the step log; a trip without a car is stored (and fingerprinted) as before cars.

        What `dataclasses.asdict` gave, built field by field: asdict deep-copies every value, and two
        calls of it per new trip were the biggest single cost of writing the trip (py-spy).
        """
        data = _fields(self)
        flight = data["flight"] = _fields(self.flight)
        if self.flight.seats:
            flight["seats"] = list(self.flight.seats)
        else:
            del flight["seats"]
        data["hotel"] = None if self.hotel is None else _fields(self.hotel)
        if self.car is None:
            del data["car"]
        else:
            data["car"] = _fields(self.car)
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
        return fingerprint_of(self.to_json())

    def has_part(self, participant: str) -> bool:
        """Whether the request carries the part named after this participant (`hotel`, ...): what an
        optional part of the saga (coordinator/saga.py) is skipped by."""
        return getattr(self, participant, None) is not None


def fingerprint_of(request_json: dict[str, Any]) -> str:
    """The idempotency fingerprint of a request, from its `to_json()` (when that is at hand already)."""
    body = json.dumps(request_json, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _fields(part: Any) -> dict[str, Any]:
    """A dataclass's fields as a dict, in field order, values as they are (no copies)."""
    return {name: getattr(part, name) for name in part.__dataclass_fields__}


@dataclass(slots=True)
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
        return parse_step_name(self.name)[0]

    @property
    def action(self) -> Action:
        return parse_step_name(self.name)[1]

    @property
    def revision(self) -> int:
        """Which reservation of the participant the step acts on: 1 the booking's, n a change's."""
        return parse_step_name(self.name)[2]


class OperationKind(StrEnum):
    CHANGE = "CHANGE"
    CANCEL = "CANCEL"


class OperationOutcome(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    APPLIED = "APPLIED"  # a change made: the trip stands as its request says
    REVERTED = "REVERTED"  # a change that could not be made: the trip stands as it was
    CANCELLED = "CANCELLED"  # the trip was cancelled by its customer


@dataclass(slots=True)
class Operation:
    """A change or a cancellation of a booked trip: a saga of its own on the trip (coordinator/operations.py).

    Its reservations are the trip's revision `revision` ("{trip_id}/flight.2"); `parts` are reserved anew
    (changed or added), `dropped` lose their current reservation (changed or removed). The request is the
    trip as it stands once the change is applied (None for a cancellation). `fee_minor` is what the fare
    rules keep of a cancelled trip's payment. `parked_from`: the state it was in when it went to
    NEEDS_ATTENTION, where RetryTrip sends it back.
    """

    operation_id: str
    kind: OperationKind
    revision: int
    created_at: datetime
    deadline_at: datetime
    request: TripRequest | None = None
    parts: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    fee_minor: int = 0
    fingerprint: str = ""
    outcome: OperationOutcome = OperationOutcome.IN_PROGRESS
    reason: str = ""
    parked_from: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.operation_id,
            "kind": self.kind.value,
            "revision": self.revision,
            "created_at": self.created_at.isoformat(),
            "deadline_at": self.deadline_at.isoformat(),
            "parts": list(self.parts),
            "dropped": list(self.dropped),
            "outcome": self.outcome.value,
        }
        optional = {
            "request": None if self.request is None else self.request.to_json(),
            "fee_minor": self.fee_minor,
            "fingerprint": self.fingerprint,
            "reason": self.reason,
            "parked_from": self.parked_from,
        }
        data.update({k: v for k, v in optional.items() if v})
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Operation:
        request = data.get("request")
        return cls(
            operation_id=data["id"],
            kind=OperationKind(data["kind"]),
            revision=int(data["revision"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            deadline_at=datetime.fromisoformat(data["deadline_at"]),
            request=None if request is None else TripRequest.from_json(request),
            parts=tuple(data.get("parts", ())),
            dropped=tuple(data.get("dropped", ())),
            fee_minor=int(data.get("fee_minor", 0)),
            fingerprint=data.get("fingerprint", ""),
            outcome=OperationOutcome(data.get("outcome", OperationOutcome.IN_PROGRESS.value)),
            reason=data.get("reason", ""),
            parked_from=data.get("parked_from", ""),
        )


@dataclass(slots=True)
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
    # Changes and cancellations of the booked trip, oldest first (coordinator/operations.py).
    operations: list[Operation] = field(default_factory=list)

    @property
    def trip_id(self) -> str:
        return self.request.trip_id

    @property
    def operation(self) -> Operation | None:
        """The change or cancellation under way, if one is."""
        last = self.operations[-1] if self.operations else None
        return last if last is not None and last.outcome is OperationOutcome.IN_PROGRESS else None

    def operation_at(self, revision: int) -> Operation | None:
        """The operation that made this revision's reservations (None for the booking's, revision 1)."""
        return next((op for op in self.operations if op.revision == revision), None)

    def operations_json(self) -> list[dict[str, Any]]:
        return [op.to_json() for op in self.operations]

    def step(self, name: str) -> Step | None:
        return self.steps.get(name)

    def status_of(self, name: str) -> StepStatus | None:
        step = self.steps.get(name)
        return None if step is None else step.status

    def ordered_steps(self) -> list[Step]:
        return sorted(self.steps.values(), key=lambda s: s.seq)

    def price_of(self, participant: str, revision: int = 1) -> int | None:
        step = self.steps.get(step_name(participant, Action.RESERVE, revision))
        if step is None or step.status is not StepStatus.SUCCEEDED:
            return None
        return int(step.result.get("price_minor", 0))
