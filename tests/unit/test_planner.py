"""The saga's decisions at every point, from the step log alone (pure: no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from coordinator.planner import Call, Done, Transition, plan
from coordinator.saga import TRIP_SAGA
from coordinator.trip import FlightPart, HotelPart, Step, StepStatus, Trip, TripRequest, TripState

pytestmark = pytest.mark.unit

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
S, OK, NO, KO = StepStatus.STARTED, StepStatus.SUCCEEDED, StepStatus.REFUSED, StepStatus.FAILED


def trip(state: TripState, steps: dict[str, StepStatus], *, hotel: bool = True, deadline_in: float = 60) -> Trip:
    request = TripRequest(
        trip_id="t1",
        customer_id="cust-ada",
        email="ada@example.com",
        name="Ada",
        flight=FlightPart("TM101-20270315", "", 1, 1),
        hotel=HotelPart("lis-alfama", 1, "2027-03-15", "2027-03-18", 1) if hotel else None,
        payment_method_id="pm_ada_visa",
        currency="EUR",
    )
    t = Trip(request, state, NOW, NOW, NOW + timedelta(seconds=deadline_in), 1)
    for seq, (name, status) in enumerate(steps.items(), 1):
        t.steps[name] = Step(name, seq, status, 1, NOW, result={"price_minor": 100} if status is OK else {})
    return t


RESERVED = {"flight.reserve": OK, "hotel.reserve": OK, "payment.reserve": OK, "notify.reserve": OK}


@pytest.mark.parametrize(
    ("state", "steps", "expected"),
    [
        (TripState.PENDING, {}, Transition(TripState.RESERVING)),
        (TripState.RESERVING, {}, Call(("flight.reserve", "hotel.reserve"))),
        # after a crash with one intent durable and no outcome: resend just that one
        (TripState.RESERVING, {"flight.reserve": OK, "hotel.reserve": S}, Call(("hotel.reserve",))),
        (TripState.RESERVING, {"flight.reserve": OK, "hotel.reserve": OK}, Call(("payment.reserve", "notify.reserve"))),
        (TripState.RESERVING, RESERVED, Transition(TripState.CONFIRMING)),
        # the notification is auxiliary: its refusal does not stop the trip
        (TripState.RESERVING, {**RESERVED, "notify.reserve": NO}, Transition(TripState.CONFIRMING)),
        (TripState.CONFIRMING, RESERVED, Call(("flight.confirm", "hotel.confirm"))),
        (TripState.CONFIRMING, {**RESERVED, "flight.confirm": OK, "hotel.confirm": OK}, Call(("payment.confirm",))),
        (
            TripState.CONFIRMING,
            {**RESERVED, "flight.confirm": OK, "hotel.confirm": OK, "payment.confirm": OK},
            Call(("notify.confirm",)),
        ),
        (
            TripState.CONFIRMING,
            {**RESERVED, "flight.confirm": OK, "hotel.confirm": OK, "payment.confirm": OK, "notify.confirm": KO},
            Transition(TripState.CONFIRMED),
        ),
        # notify never staged: nothing to confirm for it
        (
            TripState.CONFIRMING,
            {**RESERVED, "notify.reserve": NO, "flight.confirm": OK, "hotel.confirm": OK, "payment.confirm": OK},
            Transition(TripState.CONFIRMED),
        ),
        (TripState.CONFIRMED, RESERVED, Done()),
        (TripState.CANCELLED, {}, Done()),
        (TripState.NEEDS_ATTENTION, {}, Done()),
    ],
)
def test_forward_decisions(state: TripState, steps: dict[str, StepStatus], expected: object) -> None:
    assert plan(TRIP_SAGA, trip(state, steps), NOW) == expected


def test_a_refused_reserve_compensates_with_its_reason() -> None:
    t = trip(TripState.RESERVING, {"flight.reserve": NO, "hotel.reserve": OK})
    t.steps["flight.reserve"].error_code = "RESOURCE_EXHAUSTED"
    t.steps["flight.reserve"].error_reason = "SOLD_OUT"
    decision = plan(TRIP_SAGA, t, NOW)
    assert isinstance(decision, Transition)
    assert decision.state is TripState.COMPENSATING
    assert "flight.reserve was refused (RESOURCE_EXHAUSTED SOLD_OUT)" in decision.reason


def test_a_reserve_that_kept_failing_compensates() -> None:
    decision = plan(TRIP_SAGA, trip(TripState.RESERVING, {"flight.reserve": OK, "hotel.reserve": KO}), NOW)
    assert isinstance(decision, Transition) and decision.state is TripState.COMPENSATING
    assert "hotel.reserve kept failing" in decision.reason


def test_a_trip_past_its_deadline_compensates_instead_of_reserving_more() -> None:
    t = trip(TripState.RESERVING, {"flight.reserve": OK, "hotel.reserve": S}, deadline_in=-1)
    assert plan(TRIP_SAGA, t, NOW) == Transition(TripState.COMPENSATING, "the trip ran out of time while reserving")


def test_a_trip_without_hotel_never_reserves_one() -> None:
    assert plan(TRIP_SAGA, trip(TripState.RESERVING, {}, hotel=False), NOW) == Call(("flight.reserve",))
    steps = {"flight.reserve": OK, "payment.reserve": OK, "notify.reserve": OK}
    assert plan(TRIP_SAGA, trip(TripState.CONFIRMING, steps, hotel=False), NOW) == Call(("flight.confirm",))


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # payment refused: cancel the later group first (notify), then flight and hotel together
        (
            {"flight.reserve": OK, "hotel.reserve": OK, "payment.reserve": NO, "notify.reserve": OK},
            Call(("notify.cancel",)),
        ),
        (
            {
                "flight.reserve": OK,
                "hotel.reserve": OK,
                "payment.reserve": NO,
                "notify.reserve": OK,
                "notify.cancel": OK,
            },
            Call(("flight.cancel", "hotel.cancel")),
        ),
        # flight refused: only the hotel may hold something
        ({"flight.reserve": NO, "hotel.reserve": OK}, Call(("hotel.cancel",))),
        # an outcome never learned (STARTED, or FAILED) counts as "may have happened": cancel it
        ({"flight.reserve": NO, "hotel.reserve": S}, Call(("hotel.cancel",))),
        ({"flight.reserve": KO, "hotel.reserve": NO}, Call(("flight.cancel",))),
        # resend a cancel whose outcome a crash lost
        ({"flight.reserve": OK, "hotel.reserve": NO, "flight.cancel": S}, Call(("flight.cancel",))),
        ({"flight.reserve": OK, "hotel.reserve": NO, "flight.cancel": OK}, Transition(TripState.CANCELLED, "why")),
        ({"flight.reserve": NO, "hotel.reserve": NO}, Transition(TripState.CANCELLED, "why")),
    ],
)
def test_compensation_in_reverse_order(steps: dict[str, StepStatus], expected: object) -> None:
    t = trip(TripState.COMPENSATING, steps)
    t.failure_reason = "why"
    assert plan(TRIP_SAGA, t, NOW) == expected


def test_a_compensation_past_its_budget_needs_attention() -> None:
    t = trip(TripState.COMPENSATING, {"flight.reserve": OK, "hotel.reserve": NO, "flight.cancel": KO})
    t.failure_reason = "hotel.reserve was refused"
    decision = plan(TRIP_SAGA, t, NOW)
    assert isinstance(decision, Transition) and decision.state is TripState.NEEDS_ATTENTION
    assert decision.reason.startswith("hotel.reserve was refused; compensation failed: flight.cancel kept failing")


def test_a_confirm_refused_after_the_decision_cancels_everything_and_voids_the_payment() -> None:
    steps = {**RESERVED, "flight.confirm": OK, "hotel.confirm": NO}
    decision = plan(TRIP_SAGA, trip(TripState.CONFIRMING, steps), NOW)
    assert isinstance(decision, Transition) and decision.state is TripState.COMPENSATING
    t = trip(TripState.COMPENSATING, steps)
    assert plan(TRIP_SAGA, t, NOW) == Call(("payment.cancel", "notify.cancel"))
    t.steps["payment.cancel"] = Step("payment.cancel", 9, OK, 1, NOW)
    t.steps["notify.cancel"] = Step("notify.cancel", 10, OK, 1, NOW)
    assert plan(TRIP_SAGA, t, NOW) == Call(("flight.cancel", "hotel.cancel"))


def test_a_confirm_that_kept_failing_parks_the_trip_for_an_operator() -> None:
    steps = {**RESERVED, "flight.confirm": OK, "hotel.confirm": KO}
    decision = plan(TRIP_SAGA, trip(TripState.CONFIRMING, steps), NOW)
    assert isinstance(decision, Transition) and decision.state is TripState.NEEDS_ATTENTION
