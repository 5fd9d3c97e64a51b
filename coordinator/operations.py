"""What to do next with a booked trip being changed or cancelled (pure, like coordinator/planner.py).

A change (ChangeTrip) is a saga of its own on the trip, read off the same saga definition:

- CHANGING: reserve the new parts (revision r) group by group, then the collector (payment) for the
  price difference, a charge or a refund, if there is one, and stage the auxiliary message. A refusal,
  or running out of time, reverts.
- CHANGE_CONFIRMING (the commit decision, durable): confirm the new reservations group by group (the
  payment last), then cancel the reservations they replace. A confirm refused here (a hold expired)
  reverts: the replaced reservations are only cancelled once every new one is confirmed.
- CHANGE_REVERTING: cancel the change's reservations in reverse; the trip is CONFIRMED again, exactly
  as it was.

A cancellation (CancelTrip) only goes forward (CANCELLING): cancel every booked part in reverse, refund
what was paid less the fare rules' fee, tell the customer, and end CANCELLED. A step that keeps failing
parks either in NEEDS_ATTENTION; RetryTrip sends it back to the state it left (`parked_from`).
"""

from __future__ import annotations

from datetime import datetime

from coordinator.booking import Booking, booking, payment_of
from coordinator.plans import COMPENSATION_FAILED, SETTLED, Call, Done, Plan, Transition, failure_reason
from coordinator.saga import SagaDefinition
from coordinator.trip import Action, Operation, OperationOutcome, StepStatus, Trip, TripState, step_name
from services.kit.money import Money

OPERATION_STATES = frozenset(
    {TripState.CHANGING, TripState.CHANGE_CONFIRMING, TripState.CHANGE_REVERTING, TripState.CANCELLING}
)


def plan_operation(saga: SagaDefinition, trip: Trip, now: datetime) -> Plan:
    op = trip.operation
    if op is None or trip.state not in OPERATION_STATES:
        return Done()  # nothing of ours to drive (a trip in a state only an operator moves on)
    before = booking(saga, trip, upto=op)
    if trip.state is TripState.CHANGING:
        return _reserving(saga, trip, op, before, now)
    if trip.state is TripState.CHANGE_CONFIRMING:
        return _confirming(saga, trip, op, before)
    if trip.state is TripState.CHANGE_REVERTING:
        return _reverting(saga, trip, op)
    return _cancelling(saga, trip, op, before)


def touched(saga: SagaDefinition, trip: Trip, op: Operation, before: Booking, group: tuple[str, ...]) -> list[str]:
    """The participants of a group the operation has a reservation of its own with: its new parts, the
    collector when money moves (a change's difference is known once its new prices are), the auxiliary."""
    members = []
    for p in group:
        if p in saga.auxiliary or p in op.parts or (p == saga.collector and payment_of(saga, trip, op, before)):
            members.append(p)
    return members


def operation_steps(saga: SagaDefinition, trip: Trip, op: Operation) -> list[str]:
    """Every step the operation sent: those of its revision and the cancels of what it replaced."""
    before = booking(saga, trip, upto=op)
    replaced = {step_name(p, Action.CANCEL, before.parts[p]) for p in op.dropped if p in before.parts}
    return [s.name for s in trip.ordered_steps() if s.revision == op.revision or s.name in replaced]


def _reserving(saga: SagaDefinition, trip: Trip, op: Operation, before: Booking, now: datetime) -> Plan:
    r = op.revision
    for group in saga.reserve_groups:
        members = touched(saga, trip, op, before, group)
        unsettled = [n for p in members if trip.status_of(n := step_name(p, Action.RESERVE, r)) not in SETTLED]
        if unsettled:
            if now >= op.deadline_at:
                return Transition(TripState.CHANGE_REVERTING, "the change ran out of time while reserving")
            return Call(tuple(unsettled))
        for p in members:
            step = trip.steps[step_name(p, Action.RESERVE, r)]
            if p not in saga.auxiliary and step.status is not StepStatus.SUCCEEDED:
                return Transition(TripState.CHANGE_REVERTING, failure_reason(step.name, step))
    return Transition(TripState.CHANGE_CONFIRMING)


def _confirming(saga: SagaDefinition, trip: Trip, op: Operation, before: Booking) -> Plan:
    r = op.revision
    for group in saga.confirm_groups:
        members = [
            p
            for p in touched(saga, trip, op, before, group)
            if trip.status_of(step_name(p, Action.RESERVE, r)) is StepStatus.SUCCEEDED
        ]
        unsettled = [n for p in members if trip.status_of(n := step_name(p, Action.CONFIRM, r)) not in SETTLED]
        if unsettled:
            return Call(tuple(unsettled))
        for p in members:
            step = trip.steps[step_name(p, Action.CONFIRM, r)]
            if p in saga.auxiliary or step.status is StepStatus.SUCCEEDED:
                continue
            if step.status is StepStatus.REFUSED:
                return Transition(TripState.CHANGE_REVERTING, failure_reason(step.name, step))
            return Transition(TripState.NEEDS_ATTENTION, failure_reason(step.name, step))
    # Every new reservation is confirmed and the difference settled: now let go of what they replace.
    replaced = [step_name(p, Action.CANCEL, before.parts[p]) for p in op.dropped if p in before.parts]
    stuck = _settle(trip, replaced)
    if stuck is not None:
        return stuck
    return Transition(TripState.CONFIRMED, outcome=OperationOutcome.APPLIED)


def _reverting(saga: SagaDefinition, trip: Trip, op: Operation) -> Plan:
    r = op.revision
    for group in reversed(saga.reserve_groups):
        held = [p for p in group if _may_hold(trip, step_name(p, Action.RESERVE, r))]
        stuck = _settle(trip, [step_name(p, Action.CANCEL, r) for p in held])
        if stuck is not None:
            return stuck
    return Transition(TripState.CONFIRMED, trip.failure_reason, outcome=OperationOutcome.REVERTED)


def _cancelling(saga: SagaDefinition, trip: Trip, op: Operation, before: Booking) -> Plan:
    r = op.revision
    for group in reversed(saga.reserve_groups):
        booked = [step_name(p, Action.CANCEL, before.parts[p]) for p in group if p in before.parts]
        stuck = _settle(trip, booked)
        if stuck is not None:
            return stuck
    # Then the refund and the message, each a reservation of this revision, reserved then confirmed.
    for p in (saga.collector, *sorted(saga.auxiliary)):
        if p == saga.collector and not payment_of(saga, trip, op, before):
            continue  # nothing to refund: the fee keeps it all, or nothing was paid
        for action in (Action.RESERVE, Action.CONFIRM):
            name = step_name(p, action, r)
            step = trip.steps.get(name)
            if step is None or step.status is StepStatus.STARTED:
                return Call((name,))
            if step.status is not StepStatus.SUCCEEDED:
                if p in saga.auxiliary:
                    break  # the message is auxiliary: recorded, never a reason to stop
                return Transition(TripState.NEEDS_ATTENTION, failure_reason(name, step))
    reason = cancellation_reason(op, trip.request.currency)
    return Transition(TripState.CANCELLED, reason, outcome=OperationOutcome.CANCELLED)


def cancellation_reason(op: Operation, currency: str) -> str:
    fee = f"; the fare rules kept a fee of {Money(op.fee_minor, currency)}" if op.fee_minor else ""
    return f"cancelled by the customer{fee}"


def _settle(trip: Trip, names: list[str]) -> Plan | None:
    """Send these cancels (in parallel) until each has succeeded; park the trip if one cannot."""
    unsettled = [n for n in names if trip.status_of(n) not in SETTLED]
    if unsettled:
        return Call(tuple(unsettled))
    for name in names:
        step = trip.steps[name]
        if step.status is not StepStatus.SUCCEEDED:
            return Transition(TripState.NEEDS_ATTENTION, f"{COMPENSATION_FAILED}{failure_reason(name, step)}")
    return None


def _may_hold(trip: Trip, reserve: str) -> bool:
    status = trip.status_of(reserve)
    return status is not None and status is not StepStatus.REFUSED
