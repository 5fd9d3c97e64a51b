"""Changes and cancellations of a booked trip, decided from the step log alone (pure: no I/O):
what the trip holds and has paid (coordinator/booking.py), what to send next at every point
(coordinator/operations.py), the fee (coordinator/fares.py) and the ChangeTrip request (coordinator/parse.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from coordinator.booking import booking, payment_of
from coordinator.fares import cancellation_fee
from coordinator.operations import operation_steps, plan_operation
from coordinator.parse import parse_change_trip
from coordinator.planner import Call, Transition, plan
from coordinator.saga import TRIP_SAGA
from coordinator.trip import (
    CarPart,
    FlightPart,
    HotelPart,
    Operation,
    OperationKind,
    OperationOutcome,
    Step,
    StepStatus,
    Trip,
    TripRequest,
    TripState,
    parse_step_name,
    step_name,
)
from services.kit.errors import InvalidRequestError
from services.kit.money import Money
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = pytest.mark.unit

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
S, OK, NO, KO = StepStatus.STARTED, StepStatus.SUCCEEDED, StepStatus.REFUSED, StepStatus.FAILED
REQUEST = TripRequest(
    trip_id="t1",
    customer_id="cust-ada",
    email="ada@example.com",
    name="Ada",
    flight=FlightPart("TM101-20270315", "", 1, 1),
    hotel=HotelPart("lis-alfama", 1, "2027-03-15", "2027-03-18", 1),
    payment_method_id="pm_ada_visa",
    currency="EUR",
)
PRICES = {"flight": 300, "hotel": 200, "payment": 500, "car": 150}
BOOKED = {f"{p}.{a}": OK for p in ("flight", "hotel", "payment", "notify") for a in ("reserve", "confirm")}


def with_steps(trip: Trip, steps: dict[str, StepStatus], prices: dict[str, int] | None = None) -> Trip:
    for name, status in steps.items():
        participant, action, _ = parse_step_name(name)
        price = (prices or {}).get(name, PRICES.get(participant, 0))
        result = {"price_minor": price} if status is OK and action.value == "reserve" else {}
        trip.steps[name] = Step(name, len(trip.steps) + 1, status, 1, NOW, result=result)
    return trip


def changed(
    state: TripState, op: Operation, steps: dict[str, StepStatus], prices: dict[str, int] | None = None
) -> Trip:
    trip = with_steps(Trip(REQUEST, TripState.CONFIRMED, NOW, NOW, NOW + timedelta(minutes=1), 2), dict(BOOKED))
    trip.state, trip.operations = state, [op]
    return with_steps(trip, steps, prices)


def change(parts: tuple[str, ...], dropped: tuple[str, ...], **request: object) -> Operation:
    return Operation(
        "c1",
        OperationKind.CHANGE,
        2,
        NOW,
        NOW + timedelta(minutes=1),
        request=replace(REQUEST, **request),  # type: ignore[arg-type]
        parts=parts,
        dropped=dropped,
    )


LONGER = change(("hotel",), ("hotel",), hotel=HotelPart("lis-alfama", 1, "2027-03-15", "2027-03-20", 1))
DEARER = {"hotel.reserve@2": 350}
FEE = Money(60, "EUR")


def test_step_names_carry_the_revision_after_the_booking() -> None:
    assert step_name("hotel", parse_step_name("hotel.cancel")[1]) == "hotel.cancel"
    assert parse_step_name("payment.reserve@3") == ("payment", parse_step_name("payment.reserve")[1], 3)


def test_the_booking_holds_revision_one_and_has_paid_its_total() -> None:
    trip = changed(TripState.CHANGING, LONGER, {})
    before = booking(TRIP_SAGA, trip, upto=LONGER)
    assert before.parts == {"flight": 1, "hotel": 1} and before.paid == 500 and before.charges == [1]
    assert before.total(trip) == 500


@pytest.mark.parametrize(
    ("state", "steps", "expected"),
    [
        (TripState.CHANGING, {}, Call(("hotel.reserve@2",))),
        # the difference (350 - 200) is charged; the message is staged with it
        (TripState.CHANGING, {"hotel.reserve@2": OK}, Call(("payment.reserve@2", "notify.reserve@2"))),
        (
            TripState.CHANGING,
            {"hotel.reserve@2": OK, "payment.reserve@2": OK, "notify.reserve@2": OK},
            Transition(TripState.CHANGE_CONFIRMING),
        ),
        (
            TripState.CHANGING,
            {"hotel.reserve@2": NO},
            Transition(TripState.CHANGE_REVERTING, "hotel.reserve@2 was refused"),
        ),
        (
            TripState.CHANGE_CONFIRMING,
            {"hotel.reserve@2": OK, "payment.reserve@2": OK, "notify.reserve@2": OK},
            Call(("hotel.confirm@2",)),
        ),
        (
            TripState.CHANGE_CONFIRMING,
            {"hotel.reserve@2": OK, "payment.reserve@2": OK, "notify.reserve@2": OK, "hotel.confirm@2": OK},
            Call(("payment.confirm@2",)),
        ),
        # every new reservation confirmed and the message sent: only now the old stay goes
        (
            TripState.CHANGE_CONFIRMING,
            {
                "hotel.reserve@2": OK,
                "payment.reserve@2": OK,
                "notify.reserve@2": OK,
                "hotel.confirm@2": OK,
                "payment.confirm@2": OK,
                "notify.confirm@2": OK,
            },
            Call(("hotel.cancel",)),
        ),
        # a new hold that expired before its confirm: undo the change, the booked stay is untouched
        (
            TripState.CHANGE_CONFIRMING,
            {"hotel.reserve@2": OK, "payment.reserve@2": OK, "notify.reserve@2": OK, "hotel.confirm@2": NO},
            Transition(TripState.CHANGE_REVERTING, "hotel.confirm@2 was refused"),
        ),
        (
            TripState.CHANGE_REVERTING,
            {"hotel.reserve@2": OK, "payment.reserve@2": OK, "notify.reserve@2": OK, "hotel.confirm@2": NO},
            Call(("payment.cancel@2", "notify.cancel@2")),
        ),
        # an unknown outcome may hold: it is cancelled too
        (TripState.CHANGE_REVERTING, {"hotel.reserve@2": KO}, Call(("hotel.cancel@2",))),
        (
            TripState.CHANGE_REVERTING,
            {"hotel.reserve@2": KO, "hotel.cancel@2": KO},
            Transition(TripState.NEEDS_ATTENTION, "compensation failed: hotel.cancel@2 kept failing"),
        ),
    ],
)
def test_a_change_at_every_point(state: TripState, steps: dict[str, StepStatus], expected: object) -> None:
    trip = changed(state, LONGER, steps, DEARER)
    got = plan(TRIP_SAGA, trip, NOW)
    if isinstance(expected, Transition) and isinstance(got, Transition):
        assert got.state == expected.state and got.reason.startswith(expected.reason)
    else:
        assert got == expected


def test_a_change_ends_applied_or_reverted() -> None:
    done = {f"{p}.{a}@2": OK for p in ("hotel", "payment", "notify") for a in ("reserve", "confirm")}
    applied = plan(TRIP_SAGA, changed(TripState.CHANGE_CONFIRMING, LONGER, {**done, "hotel.cancel": OK}, DEARER), NOW)
    assert applied == Transition(TripState.CONFIRMED, outcome=OperationOutcome.APPLIED)
    trip = changed(TripState.CHANGE_REVERTING, LONGER, {"hotel.reserve@2": NO})
    trip.failure_reason = "hotel.reserve@2 was refused"
    assert plan(TRIP_SAGA, trip, NOW) == Transition(
        TripState.CONFIRMED, "hotel.reserve@2 was refused", outcome=OperationOutcome.REVERTED
    )


def test_a_change_that_runs_out_of_time_while_reserving_reverts() -> None:
    trip = changed(TripState.CHANGING, LONGER, {"hotel.reserve@2": S})
    assert plan(TRIP_SAGA, trip, NOW + timedelta(minutes=2)) == Transition(
        TripState.CHANGE_REVERTING, "the change ran out of time while reserving"
    )


def test_a_change_at_the_same_price_moves_no_money_and_a_cheaper_one_refunds_from_the_charges() -> None:
    same = changed(TripState.CHANGING, LONGER, {"hotel.reserve@2": OK}, {"hotel.reserve@2": 200})
    assert plan(TRIP_SAGA, same, NOW) == Call(("notify.reserve@2",))
    cheaper = changed(TripState.CHANGING, LONGER, {"hotel.reserve@2": OK}, {"hotel.reserve@2": 120})
    assert payment_of(TRIP_SAGA, cheaper, LONGER, booking(TRIP_SAGA, cheaper, upto=LONGER)) == -80
    dropped = change((), ("hotel",), hotel=None)
    trip = changed(TripState.CHANGING, dropped, {})
    assert plan(TRIP_SAGA, trip, NOW) == Call(("payment.reserve@2", "notify.reserve@2"))
    assert payment_of(TRIP_SAGA, trip, dropped, booking(TRIP_SAGA, trip, upto=dropped)) == -200


def test_an_applied_change_is_what_the_trip_holds_and_has_paid_after_it() -> None:
    done = {f"{p}.{a}@2": OK for p in ("hotel", "payment", "notify") for a in ("reserve", "confirm")}
    trip = changed(TripState.CONFIRMED, LONGER, {**done, "hotel.cancel": OK}, DEARER)
    done_op = replace(LONGER, outcome=OperationOutcome.APPLIED)
    trip.operations = [done_op]
    after = booking(TRIP_SAGA, trip)
    assert after.parts == {"flight": 1, "hotel": 2} and after.paid == 650 and after.charges == [1, 2]
    assert after.total(trip) == 650 and after.request.hotel == LONGER.request.hotel  # type: ignore[union-attr]
    assert operation_steps(TRIP_SAGA, trip, done_op)[-1] == "hotel.cancel"


def test_a_cancellation_cancels_the_booked_parts_then_refunds_less_the_fee_then_tells_the_customer() -> None:
    cancel = Operation("cancel", OperationKind.CANCEL, 2, NOW, NOW + timedelta(minutes=1), fee_minor=60)
    steps: dict[str, StepStatus] = {}
    sent: list[tuple[str, ...]] = []
    for _ in range(8):
        trip = changed(TripState.CANCELLING, cancel, steps)
        next_plan = plan_operation(TRIP_SAGA, trip, NOW)
        if not isinstance(next_plan, Call):
            break
        sent.append(next_plan.steps)
        steps.update(dict.fromkeys(next_plan.steps, OK))
    assert sent == [
        ("flight.cancel", "hotel.cancel"),
        ("payment.reserve@2",),
        ("payment.confirm@2",),
        ("notify.reserve@2",),
        ("notify.confirm@2",),
    ]
    assert next_plan == Transition(
        TripState.CANCELLED,
        f"cancelled by the customer; the fare rules kept a fee of {FEE}",
        OperationOutcome.CANCELLED,
    )
    assert payment_of(TRIP_SAGA, trip, cancel, booking(TRIP_SAGA, trip, upto=cancel)) == -440


def test_a_refund_that_keeps_failing_parks_the_cancellation() -> None:
    cancel = Operation("cancel", OperationKind.CANCEL, 2, NOW, NOW + timedelta(minutes=1))
    trip = changed(TripState.CANCELLING, cancel, {"flight.cancel": OK, "hotel.cancel": OK, "payment.reserve@2": KO})
    parked = plan_operation(TRIP_SAGA, trip, NOW)
    assert isinstance(parked, Transition) and parked.state is TripState.NEEDS_ATTENTION
    assert "payment.reserve@2 kept failing" in parked.reason


@pytest.mark.parametrize(
    ("cabin", "today", "fee"),
    [
        (1, date(2027, 3, 5), 2000),  # economy, 10 days before: 20 %
        (2, date(2027, 3, 5), 1000),  # premium economy: 10 %
        (3, date(2027, 3, 5), 0),  # business fares are flexible
        (1, date(2027, 2, 13), 0),  # 30 days before or more: free
        (1, date(2027, 2, 14), 2000),  # 29 days before
    ],
)
def test_the_fare_rules_fee(cabin: int, today: date, fee: int) -> None:
    assert cancellation_fee(FlightPart("TM101-20270315", "", cabin, 1), 10_000, today) == fee


def test_a_change_request_is_parsed_and_applied_to_the_booked_trip() -> None:
    request = trip_pb.ChangeTripRequest(
        trip_id="t1",
        change_id="c1",
        car=trip_pb.TripCar(
            city="Lisbon",
            car_class=1,  # type: ignore[arg-type]
            pick_up_date=common_pb.Date(year=2027, month=3, day=15),
            drop_off_date=common_pb.Date(year=2027, month=3, day=18),
        ),
        drop_hotel=True,
    )
    spec = parse_change_trip(request)
    after = spec.applied_to(REQUEST)
    assert after.hotel is None and after.car == CarPart("Lisbon", 1, "2027-03-15", "2027-03-18")
    assert after.flight == REQUEST.flight and spec.fingerprint() == parse_change_trip(request).fingerprint()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (trip_pb.ChangeTripRequest(trip_id="t1", change_id="c1"), "flight"),
        (trip_pb.ChangeTripRequest(trip_id="t1", drop_car=True), "change_id"),
        (trip_pb.ChangeTripRequest(trip_id="t 1", change_id="c1", drop_car=True), "trip_id"),
        (
            trip_pb.ChangeTripRequest(trip_id="t1", change_id="c1", drop_hotel=True, hotel=trip_pb.TripHotel()),
            "drop_hotel",
        ),
    ],
)
def test_a_bad_change_request_names_its_field(request_: trip_pb.ChangeTripRequest, field: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_change_trip(request_)
    assert field in [v.field for v in refused.value.violations]
