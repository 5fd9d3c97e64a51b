"""What to do next with a trip, given its state and its step log: pure, so every crash point is testable.

The engine asks `plan(saga, trip, now)` after every step and carries the answer out. After a crash the
same question on the reloaded step log gives the same answer: steps whose intent is durable but whose
outcome is not (STARTED) are sent again; participants are idempotent (P1, P2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from coordinator.saga import SagaDefinition
from coordinator.trip import Step, StepStatus, Trip, TripState


@dataclass(frozen=True)
class Call:
    """Send these steps, in parallel."""

    steps: tuple[str, ...]


@dataclass(frozen=True)
class Transition:
    """Write the trip's new state durably (CONFIRMING is the commit decision)."""

    state: TripState
    reason: str = ""


@dataclass(frozen=True)
class Done:
    pass


Plan = Call | Transition | Done

_SETTLED = (StepStatus.SUCCEEDED, StepStatus.REFUSED, StepStatus.FAILED)


def plan(saga: SagaDefinition, trip: Trip, now: datetime) -> Plan:
    if trip.state.terminal:
        return Done()
    if trip.state is TripState.PENDING:
        return Transition(TripState.RESERVING)
    if trip.state is TripState.RESERVING:
        return _reserving(saga, trip, now)
    if trip.state is TripState.CONFIRMING:
        return _confirming(saga, trip)
    return _compensating(saga, trip)


def _reserving(saga: SagaDefinition, trip: Trip, now: datetime) -> Plan:
    for group in saga.reserve_groups:
        members = [p for p in group if saga.takes_part(p, trip.request)]
        unsettled = [f"{p}.reserve" for p in members if trip.status_of(f"{p}.reserve") not in _SETTLED]
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
        unsettled = [f"{p}.confirm" for p in members if trip.status_of(f"{p}.confirm") not in _SETTLED]
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
        unsettled = [f"{p}.cancel" for p in members if trip.status_of(f"{p}.cancel") not in _SETTLED]
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


COMPENSATION_FAILED = "compensation failed: "


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


def failure_reason(name: str, step: Step) -> str:
    verb = "was refused" if step.status is StepStatus.REFUSED else "kept failing"
    detail = " ".join(x for x in (step.error_code, step.error_reason) if x)
    message = f": {step.error_message}" if step.error_message else ""
    return f"{name} {verb} ({detail}){message}" if detail else f"{name} {verb}{message}"
