"""What to do next with a trip, given its state and its step log: pure, so every crash point is testable.

The engine asks `plan(saga, trip, now)` after every step and carries the answer out. After a crash the
same question on the reloaded step log gives the same answer: steps whose intent is durable but whose
outcome is not (STARTED) are sent again; participants are idempotent (P1, P2).
"""

from __future__ import annotations

from datetime import datetime

from coordinator import operations
from coordinator.plans import COMPENSATION_FAILED, SETTLED, Call, Done, Plan, Transition, failure_reason
from coordinator.saga import SagaDefinition
from coordinator.trip import StepStatus, Trip, TripState

__all__ = ["COMPENSATION_FAILED", "Call", "Done", "Plan", "Transition", "cause", "failure_reason", "plan"]


def plan(saga: SagaDefinition, trip: Trip, now: datetime) -> Plan:
    if trip.state.terminal:
        return Done()
    if trip.state is TripState.PENDING:
        return Transition(TripState.RESERVING)
    if trip.state is TripState.RESERVING:
        return _reserving(saga, trip, now)
    if trip.state is TripState.CONFIRMING:
        return _confirming(saga, trip)
    if trip.state is TripState.COMPENSATING:
        return _compensating(saga, trip)
    return operations.plan_operation(saga, trip, now)


def _reserving(saga: SagaDefinition, trip: Trip, now: datetime) -> Plan:
    for group in saga.reserve_groups:
        members = [p for p in group if saga.takes_part(p, trip.request)]
        unsettled = [f"{p}.reserve" for p in members if trip.status_of(f"{p}.reserve") not in SETTLED]
        if unsettled:
            if now >= trip.deadline_at:
                return Transition(TripState.COMPENSATING, "the trip ran out of time while reserving")
            return Call(tuple(unsettled))
        for p in members:
            if p in saga.auxiliary:
                continue
            step = trip.steps[f"{p}.reserve"]
            if step.status is not StepStatus.SUCCEEDED:
                return Transition(TripState.COMPENSATING, failure_reason(step.name, step))
    return Transition(TripState.CONFIRMING)


def _confirming(saga: SagaDefinition, trip: Trip) -> Plan:
    for group in saga.confirm_groups:
        members = [p for p in group if _reserved(trip, p)]
        unsettled = [f"{p}.confirm" for p in members if trip.status_of(f"{p}.confirm") not in SETTLED]
        if unsettled:
            return Call(tuple(unsettled))
        for p in members:
            step = trip.steps[f"{p}.confirm"]
            if p in saga.auxiliary or step.status is StepStatus.SUCCEEDED:
                continue
            if step.status is StepStatus.REFUSED:
                return Transition(TripState.COMPENSATING, failure_reason(step.name, step))
            return Transition(TripState.NEEDS_ATTENTION, failure_reason(step.name, step))
    return Transition(TripState.CONFIRMED)


def _compensating(saga: SagaDefinition, trip: Trip) -> Plan:
    for group in reversed(saga.reserve_groups):
        members = [p for p in group if _may_hold(trip, p)]
        unsettled = [f"{p}.cancel" for p in members if trip.status_of(f"{p}.cancel") not in SETTLED]
        if unsettled:
            return Call(tuple(unsettled))
        for p in members:
            step = trip.steps[f"{p}.cancel"]
            if step.status is not StepStatus.SUCCEEDED:
                reason = f"{COMPENSATION_FAILED}{failure_reason(step.name, step)}"
                if cause(trip):
                    reason = f"{cause(trip)}; {reason}"
                return Transition(TripState.NEEDS_ATTENTION, reason)
    return Transition(TripState.CANCELLED, cause(trip))


def cause(trip: Trip) -> str:
    """Why the trip is being undone, without what went wrong undoing it (an operator retry starts over)."""
    return trip.failure_reason.split(f"; {COMPENSATION_FAILED}", 1)[0].removeprefix(COMPENSATION_FAILED)


def _reserved(trip: Trip, participant: str) -> bool:
    return trip.status_of(f"{participant}.reserve") is StepStatus.SUCCEEDED


def _may_hold(trip: Trip, participant: str) -> bool:
    """A reserve that succeeded, or whose outcome is unknown, may hold something: cancel it.

    A refused reserve held nothing, and a reserve never sent held nothing.
    """
    status = trip.status_of(f"{participant}.reserve")
    return status is not None and status is not StepStatus.REFUSED
