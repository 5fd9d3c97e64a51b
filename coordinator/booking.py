"""What a booked trip holds and what it has paid, read from its step log and its operations (pure).

A trip's reservations are revisions: the booking made revision 1 ("{trip_id}/flight"); every change or
cancellation of the booked trip is the next revision ("{trip_id}/flight.2"). A change that is applied
replaces the reservations of the parts it touches; one that is reverted leaves them. Money is read the
same way: the booking's capture, then each operation's charge (a change that costs more) or refund (one
that costs less, or a cancellation), counted once its step has confirmed. Nothing here is stored on its
own: it is all derived, so it cannot drift from the step log.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from coordinator.saga import SagaDefinition
from coordinator.trip import (
    Action,
    Operation,
    OperationKind,
    OperationOutcome,
    StepStatus,
    Trip,
    TripRequest,
    step_name,
)


@dataclass
class Booking:
    """The trip as it stands before `upto` (or now): which reservation holds each part, and the money."""

    request: TripRequest  # the trip as booked, changes applied
    parts: dict[str, int]  # priced participant -> revision of the reservation that holds it
    paid: int  # captured less refunded, in minor units
    charges: list[int] = field(default_factory=list)  # revisions of the collector's captured charges, oldest first

    def total(self, trip: Trip) -> int | None:
        """The booked parts' prices summed; None while one is not known."""
        return _sum(trip.price_of(p, revision) for p, revision in self.parts.items())


def booking(saga: SagaDefinition, trip: Trip, upto: Operation | None = None) -> Booking:
    """The booking made by the trip's first saga and every operation before `upto` (all when None)."""
    collector = saga.collector
    parts = {p: 1 for p in saga.priced if saga.takes_part(p, trip.request)}
    captured = trip.status_of(step_name(collector, Action.CONFIRM)) is StepStatus.SUCCEEDED
    state = Booking(trip.request, parts, (trip.price_of(collector) or 0) if captured else 0, [1] if captured else [])
    for op in trip.operations:
        if op is upto:
            break
        amount = payment_of(saga, trip, op, state)
        if amount and trip.status_of(step_name(collector, Action.CONFIRM, op.revision)) is StepStatus.SUCCEEDED:
            state.paid += amount
            if amount > 0:
                state.charges.append(op.revision)
        if op.kind is OperationKind.CHANGE and op.outcome is OperationOutcome.APPLIED:
            assert op.request is not None
            state.request = op.request
            for p in op.dropped:
                state.parts.pop(p, None)
            state.parts.update({p: op.revision for p in op.parts})
    return state


def total_after(trip: Trip, op: Operation, before: Booking) -> int | None:
    """What the trip costs once the change is applied: its kept parts' prices and its new ones'."""
    kept = (trip.price_of(p, r) for p, r in before.parts.items() if p not in op.dropped)
    return _sum([*kept, *(trip.price_of(p, op.revision) for p in op.parts)])


def payment_of(saga: SagaDefinition, trip: Trip, op: Operation, before: Booking) -> int | None:
    """The money the operation moves: positive a charge, negative a refund, 0 none, None not known yet
    (a change's new prices are not all in). A cancellation refunds what was paid less the fee."""
    if op.kind is OperationKind.CANCEL:
        return -max(0, before.paid - op.fee_minor)
    after = total_after(trip, op, before)
    return None if after is None else after - before.paid


def _sum(prices: Iterable[int | None]) -> int | None:
    total = 0
    for price in prices:
        if price is None:
            return None
        total += price
    return total
