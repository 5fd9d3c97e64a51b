"""Trips to proto messages (adapter)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from google.protobuf import duration_pb2, timestamp_pb2

from coordinator.requests import date_message, reservation_id, trip_total
from coordinator.saga import SAGAS, SagaDefinition, definition_label
from coordinator.trip import Action, Step, StepStatus, Trip, TripRequest
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
    total = trip_total(saga, trip)
    if total is not None:
        message.total.CopyFrom(common_pb.Money(currency_code=total.currency, minor_units=total.minor_units))
    for participant in saga.participants:
        status = _reservation_status(trip, participant)
        if status is None:
            continue
        reserve = trip.steps[f"{participant}.reserve"]
        message.reservations.append(
            trip_pb.TripReservation(
                participant=participant,
                reservation_id=reservation_id(trip.trip_id, participant),
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
    return message


def _reservation_status(trip: Trip, participant: str) -> common_pb.ReservationStatus.ValueType | None:
    reserve = trip.status_of(f"{participant}.reserve")
    if reserve is None or reserve is StepStatus.REFUSED:
        return None
    if trip.status_of(f"{participant}.cancel") is StepStatus.SUCCEEDED:
        return common_pb.RESERVATION_STATUS_CANCELLED
    if trip.status_of(f"{participant}.confirm") is StepStatus.SUCCEEDED:
        return common_pb.RESERVATION_STATUS_CONFIRMED
    if reserve is StepStatus.SUCCEEDED:
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
        reservation_id=reservation_id(trip_id, step.participant),
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
