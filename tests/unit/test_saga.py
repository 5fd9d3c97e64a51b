"""The saga definition as data: groups derived from the part declarations, optional parts skipped."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from coordinator.planner import Call, Transition, plan
from coordinator.saga import TRIP_SAGA_V1, Part
from coordinator.trip import FlightPart, Step, StepStatus, Trip, TripRequest, TripState

pytestmark = pytest.mark.unit

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
OK = StepStatus.SUCCEEDED


def test_trip_1_has_the_shape_the_saga_always_had() -> None:
    assert TRIP_SAGA_V1.label == "trip/1"
    assert TRIP_SAGA_V1.reserve_groups == (("flight", "hotel"), ("payment", "notify"))
    assert TRIP_SAGA_V1.confirm_groups == (("flight", "hotel"), ("payment",), ("notify",))
    assert TRIP_SAGA_V1.auxiliary == frozenset({"notify"})
    assert TRIP_SAGA_V1.priced == ("flight", "hotel")
    assert TRIP_SAGA_V1.optional == frozenset({"hotel"})


# A part the trip model has never heard of: the planner must handle it from its declaration alone.
BOAT = Part("boat", reserve_group=1, confirm_group=1, priced=True, optional=True)
WITH_BOAT = TRIP_SAGA_V1.with_part(BOAT, version=99)


@dataclass(frozen=True)
class BoatTrip(TripRequest):
    boat: str | None = None


def _trip(boat: str | None, steps: dict[str, StepStatus]) -> Trip:
    request = BoatTrip(
        trip_id="t1",
        customer_id="cust-ada",
        email="ada@example.com",
        name="Ada",
        flight=FlightPart("TM101-20270315", "", 1, 1),
        hotel=None,
        payment_method_id="pm_ada_visa",
        currency="EUR",
        boat=boat,
    )
    t = Trip(request, TripState.RESERVING, NOW, NOW, NOW + timedelta(seconds=60), WITH_BOAT.version)
    for seq, (name, status) in enumerate(steps.items(), 1):
        t.steps[name] = Step(name, seq, status, 1, NOW, result={"price_minor": 100})
    return t


def test_one_declaration_adds_a_parallel_priced_optional_step() -> None:
    assert WITH_BOAT.label == "trip/99"
    assert WITH_BOAT.reserve_groups == (("flight", "hotel", "boat"), ("payment", "notify"))
    assert WITH_BOAT.confirm_groups == (("flight", "hotel", "boat"), ("payment",), ("notify",))
    assert plan(WITH_BOAT, _trip("ferry", {}), NOW) == Call(("flight.reserve", "boat.reserve"))


def test_an_optional_step_is_skipped_when_the_trip_has_no_such_part() -> None:
    assert plan(WITH_BOAT, _trip(None, {}), NOW) == Call(("flight.reserve",))
    assert plan(WITH_BOAT, _trip(None, {"flight.reserve": OK}), NOW) == Call(("payment.reserve", "notify.reserve"))


def test_a_refused_optional_step_compensates_the_others() -> None:
    t = _trip("ferry", {"flight.reserve": OK, "boat.reserve": StepStatus.REFUSED})
    decision = plan(WITH_BOAT, t, NOW)
    assert isinstance(decision, Transition) and decision.state is TripState.COMPENSATING
    t.state = TripState.COMPENSATING
    assert plan(WITH_BOAT, t, NOW) == Call(("flight.cancel",))


def test_a_required_part_is_never_skipped() -> None:
    required = replace(BOAT, optional=False)
    saga = TRIP_SAGA_V1.with_part(required, version=98)
    assert plan(saga, _trip(None, {}), NOW) == Call(("flight.reserve", "boat.reserve"))
