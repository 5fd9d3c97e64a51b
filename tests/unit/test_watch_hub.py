"""coordinator/watch_hub.py: per-trip queues for watchers, bounded, never blocking the engine."""

from __future__ import annotations

from datetime import UTC, datetime

from coordinator.events import StepEvent, TripEvent
from coordinator.participants import OutcomeKind
from coordinator.trip import FlightPart, Step, StepStatus, Trip, TripRequest, TripState
from coordinator.watch import StateUpdate, StepUpdate, TripView, copy_trip
from coordinator.watch_hub import StateChange, StepChange, WatchHub

NOW = datetime(2027, 3, 1, tzinfo=UTC)


def a_trip(trip_id: str = "t-1") -> Trip:
    request = TripRequest(trip_id, "cust-ada", "ada@example.com", "", FlightPart("TM101-20270315", "", 1, 1), None,
                          "pm_ada_visa", "EUR")  # fmt: skip
    trip = Trip(request, TripState.RESERVING, NOW, NOW, NOW, 1)
    trip.steps["flight.reserve"] = Step("flight.reserve", 1, StepStatus.STARTED, 1, NOW)
    return trip


def sent(trip: Trip) -> StepEvent:
    return StepEvent(trip.trip_id, "flight.reserve", 1, NOW)


async def test_a_watcher_gets_its_trips_changes_as_copies_in_order() -> None:
    hub, trip = WatchHub(), a_trip()
    with hub.subscribe("t-1") as mine, hub.subscribe("other") as other:
        hub.on_step(trip, sent(trip))
        trip.steps["flight.reserve"].status = StepStatus.SUCCEEDED  # the engine records the outcome
        hub.on_step(trip, StepEvent(trip.trip_id, "flight.reserve", 1, NOW, OutcomeKind.OK, seconds=0.01))
        trip.state = TripState.CONFIRMING
        hub.on_trip(trip, TripEvent(trip.trip_id, TripState.CONFIRMING, TripState.RESERVING, "", NOW))
        hub.on_trip(trip, TripEvent(trip.trip_id, TripState.CONFIRMING, None, "", NOW))  # accepted: not a change
        changes = [mine.queue.get_nowait() for _ in range(3)]
        assert mine.queue.empty() and other.queue.empty()
    first, second, third = changes
    assert isinstance(first, StepChange) and first.step.status is StepStatus.STARTED and not first.answered
    assert isinstance(second, StepChange) and second.outcome == "OK" and second.final
    assert isinstance(third, StateChange) and (third.previous, third.state) == (
        TripState.RESERVING,
        TripState.CONFIRMING,
    )
    assert hub.watchers("t-1") == 0


async def test_a_slow_watcher_overflows_instead_of_growing_or_blocking() -> None:
    hub, trip = WatchHub(queue_size=4), a_trip()
    with hub.subscribe("t-1") as mine:
        for _ in range(10):
            hub.on_step(trip, sent(trip))
        assert mine.queue.qsize() == 4 and mine.overflowed and mine.dropped == 6
        mine.drain()
        assert mine.queue.empty() and not mine.overflowed


def test_nobody_watching_costs_nothing() -> None:
    hub, trip = WatchHub(), a_trip()
    hub.on_step(trip, sent(trip))  # no subscription: nothing kept
    assert hub.watchers("t-1") == 0


def test_a_trip_read_back_in_a_new_state_keeps_the_clients_state_chain() -> None:
    """A parked trip reopened by RetryTrip, read from the step log before the engine drives it: the step
    update carries the state the client knows and the state change follows, so `previous_state` always
    matches what the client was told (a flaky WatchTrip test when the step carried the new state)."""
    parked = a_trip()
    parked.state = TripState.NEEDS_ATTENTION
    parked.steps["flight.reserve"].status = StepStatus.FAILED
    view = TripView(parked)
    reopened = copy_trip(parked)
    reopened.state = TripState.COMPENSATING
    reopened.steps["flight.reserve"].status = StepStatus.STARTED
    items = view.on_read(reopened)
    assert [type(item) for item in items] == [StepUpdate, StateUpdate]
    step, state = items
    assert isinstance(step, StepUpdate) and isinstance(state, StateUpdate)
    assert step.trip_state is TripState.NEEDS_ATTENTION and step.step.status is StepStatus.STARTED
    assert (state.previous, state.state) == (TripState.NEEDS_ATTENTION, TripState.COMPENSATING)
