"""Trips to proto messages (adapter)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2

from coordinator.booking import booking, payment_of
from coordinator.requests import date_message, reservation_id
from coordinator.saga import SAGAS, SagaDefinition, definition_label
from coordinator.trip import (
    Action,
    Operation,
    OperationKind,
    OperationOutcome,
    Step,
    StepStatus,
    Trip,
    TripRequest,
    step_name,
)
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

_STEP_STATUS = {
    StepStatus.STARTED: trip_pb.STEP_STATUS_STARTED,
    StepStatus.SUCCEEDED: trip_pb.STEP_STATUS_SUCCEEDED,
    StepStatus.REFUSED: trip_pb.STEP_STATUS_REFUSED,
    StepStatus.FAILED: trip_pb.STEP_STATUS_FAILED,
}
_ACTION = {
    Action.RESERVE: trip_pb.STEP_ACTION_RESERVE,
    Action.CONFIRM: trip_pb.STEP_ACTION_CONFIRM,
    Action.CANCEL: trip_pb.STEP_ACTION_CANCEL,
}
_KIND = {OperationKind.CHANGE: trip_pb.TRIP_CHANGE_KIND_CHANGE, OperationKind.CANCEL: trip_pb.TRIP_CHANGE_KIND_CANCEL}
_OUTCOME = {
    OperationOutcome.IN_PROGRESS: trip_pb.TRIP_CHANGE_OUTCOME_IN_PROGRESS,
    OperationOutcome.APPLIED: trip_pb.TRIP_CHANGE_OUTCOME_APPLIED,
    OperationOutcome.REVERTED: trip_pb.TRIP_CHANGE_OUTCOME_REVERTED,
    OperationOutcome.CANCELLED: trip_pb.TRIP_CHANGE_OUTCOME_CANCELLED,
}


def trip_to_proto(saga: SagaDefinition, trip: Trip, known: Mapping[int, SagaDefinition] = SAGAS) -> trip_pb.Trip:
    """`saga` is the current definition, `known` the ones this coordinator can drive: the trip is shown by
    the one it started under, or, unknown here, by the current one (its steps are what they are)."""
    saga = known.get(trip.definition_version, saga)
    message = trip_pb.Trip(
        trip_id=trip.trip_id,
        state=common_pb.TripState.Value(f"TRIP_STATE_{trip.state.value}"),
        customer_id=trip.request.customer_id,
        failure_reason=trip.failure_reason,
        create_time=timestamp(trip.created_at),
        update_time=timestamp(trip.updated_at),
        request=request_to_proto(trip.request),
        definition_version=definition_label(trip.definition_version, known),
        definition_known=trip.definition_version in known,
    )
    booked = booking(saga, trip)
    total = booked.total(trip)
    if total is not None:
        message.total.CopyFrom(_money(total, trip.request.currency))
    message.paid.CopyFrom(_money(booked.paid, trip.request.currency))
    message.booked.CopyFrom(request_to_proto(booked.request))
    for reserve in trip.ordered_steps():
        status = _reservation_status(trip, reserve)
        if status is None:
            continue
        message.reservations.append(
            trip_pb.TripReservation(
                participant=reserve.participant,
                reservation_id=reservation_id(trip.trip_id, reserve.participant, reserve.revision),
                status=status,
                price=common_pb.Money(
                    currency_code=str(reserve.result.get("currency", trip.request.currency)),
                    minor_units=int(reserve.result.get("price_minor", 0)),
                ),
                seats=[
                    flight_pb.FlightSeats(flight_id=flight_id, seats=seats)
                    for flight_id, seats in dict(reserve.result.get("seats", {})).items()
                ],
            )
        )
    message.steps.extend(step_to_proto(saga, trip.trip_id, step) for step in trip.ordered_steps())
    message.changes.extend(change_to_proto(saga, trip, op) for op in trip.operations)
    return message


def change_to_proto(saga: SagaDefinition, trip: Trip, op: Operation) -> trip_pb.TripChange:
    message = trip_pb.TripChange(
        change_id=op.operation_id,
        kind=_KIND[op.kind],
        revision=op.revision,
        outcome=_OUTCOME[op.outcome],
        reason=op.reason,
        parts=op.parts,
        dropped=op.dropped,
        create_time=timestamp(op.created_at),
    )
    if op.request is not None:
        message.request.CopyFrom(request_to_proto(op.request))
    moved = payment_of(saga, trip, op, booking(saga, trip, upto=op))
    if moved is not None and op.outcome is not OperationOutcome.REVERTED:
        message.price_difference.CopyFrom(_money(moved, trip.request.currency))
    if op.kind is OperationKind.CANCEL:
        message.fee.CopyFrom(_money(op.fee_minor, trip.request.currency))
    return message


def _money(minor_units: int, currency: str) -> common_pb.Money:
    return common_pb.Money(currency_code=currency, minor_units=minor_units)


def _reservation_status(trip: Trip, reserve: Step) -> common_pb.ReservationStatus.ValueType | None:
    if reserve.action is not Action.RESERVE or reserve.status is StepStatus.REFUSED:
        return None
    p, r = reserve.participant, reserve.revision
    if trip.status_of(step_name(p, Action.CANCEL, r)) is StepStatus.SUCCEEDED:
        return common_pb.RESERVATION_STATUS_CANCELLED
    if trip.status_of(step_name(p, Action.CONFIRM, r)) is StepStatus.SUCCEEDED:
        return common_pb.RESERVATION_STATUS_CONFIRMED
    if reserve.status is StepStatus.SUCCEEDED:
        return common_pb.RESERVATION_STATUS_HELD
    return common_pb.RESERVATION_STATUS_UNSPECIFIED


def step_to_proto(saga: SagaDefinition, trip_id: str, step: Step) -> trip_pb.TripStep:
    message = trip_pb.TripStep(
        name=step.name,
        participant=step.participant,
        action=_ACTION[step.action],
        status=_STEP_STATUS[step.status],
        attempts=step.attempts,
        start_time=timestamp(step.started_at),
        error_code=step.error_code,
        error_reason=step.error_reason,
        error_message=step.error_message,
        reservation_id=reservation_id(trip_id, step.participant, step.revision),
        auxiliary=step.participant in saga.auxiliary,
    )
    if step.finished_at is not None:
        message.end_time.CopyFrom(timestamp(step.finished_at))
        duration = duration_pb2.Duration()
        duration.FromTimedelta(step.finished_at - step.started_at)
        message.duration.CopyFrom(duration)
    return message


def request_to_proto(request: TripRequest) -> trip_pb.BookTripRequest:
    message = trip_pb.BookTripRequest(
        trip_id=request.trip_id,
        customer=trip_pb.Customer(customer_id=request.customer_id, email=request.email, name=request.name),
        flight=trip_pb.TripFlight(
            outbound_flight_id=request.flight.outbound_flight_id,
            return_flight_id=request.flight.return_flight_id,
            cabin=request.flight.cabin,  # type: ignore[arg-type]
            passenger_count=request.flight.passenger_count,
            seats=request.flight.seats,
        ),
        payment_method_id=request.payment_method_id,
        currency_code=request.currency,
    )
    if request.car is not None:
        c = request.car
        message.car.CopyFrom(
            trip_pb.TripCar(
                city=c.city,
                car_class=c.car_class,  # type: ignore[arg-type]
                pick_up_date=date_message(c.pick_up),
                drop_off_date=date_message(c.drop_off),
            )
        )
    if request.hotel is not None:
        h = request.hotel
        message.hotel.CopyFrom(
            trip_pb.TripHotel(
                hotel_id=h.hotel_id,
                room_type=h.room_type,  # type: ignore[arg-type]
                check_in=date_message(h.check_in),
                check_out=date_message(h.check_out),
                room_count=h.room_count,
            )
        )
    return message


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp
