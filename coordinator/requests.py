"""The participant request of every step, built from the trip (adapter: trip -> proto messages).

Reservation ids are derived from the trip id ("{trip_id}/flight"; a change's or a cancellation's
revision r: "{trip_id}/flight.r"), so every resend of a step is the same idempotent call. The payment
amount is the sum of the priced reserves' results, and a change's difference or a cancellation's refund
is derived from the step log too (coordinator/booking.py), so a resend after a crash asks for the same.
"""

from __future__ import annotations

from typing import Any

from coordinator.booking import booking, payment_of
from coordinator.saga import SagaDefinition
from coordinator.trip import Action, Operation, OperationKind, Trip, TripRequest, parse_step_name
from services.kit.money import Money
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import notification_service_pb2 as notify_pb
from tripmesh.v1 import payment_service_pb2 as payment_pb

_SIMPLE = {
    ("flight", Action.CONFIRM): flight_pb.FlightServiceConfirmRequest,
    ("flight", Action.CANCEL): flight_pb.FlightServiceCancelRequest,
    ("hotel", Action.CONFIRM): hotel_pb.HotelServiceConfirmRequest,
    ("hotel", Action.CANCEL): hotel_pb.HotelServiceCancelRequest,
    ("payment", Action.CONFIRM): payment_pb.PaymentServiceConfirmRequest,
    ("payment", Action.CANCEL): payment_pb.PaymentServiceCancelRequest,
    ("notify", Action.CONFIRM): notify_pb.NotificationServiceConfirmRequest,
    ("notify", Action.CANCEL): notify_pb.NotificationServiceCancelRequest,
    ("car", Action.CONFIRM): car_pb.CarServiceConfirmRequest,
    ("car", Action.CANCEL): car_pb.CarServiceCancelRequest,
}


def reservation_id(trip_id: str, participant: str, revision: int = 1) -> str:
    base = f"{trip_id}/{participant}"
    return base if revision == 1 else f"{base}.{revision}"


def trip_total(saga: SagaDefinition, trip: Trip) -> Money | None:
    """The sum of the priced reserves, once every one of them has succeeded."""
    total = Money(0, trip.request.currency)
    for participant in saga.priced:
        if not saga.takes_part(participant, trip.request):
            continue
        price = trip.price_of(participant)
        if price is None:
            return None
        total = Money(total.minor_units + price, total.currency)
    return total


def build_request(saga: SagaDefinition, trip: Trip, name: str) -> Any:
    participant, action, revision = parse_step_name(name)
    rid = reservation_id(trip.trip_id, participant, revision)
    if action is not Action.RESERVE:
        return _SIMPLE[(participant, action)](reservation_id=rid)
    op = trip.operation_at(revision) if revision > 1 else None
    request = trip.request if op is None or op.request is None else op.request
    if participant == "flight":
        return flight_pb.FlightServiceReserveRequest(
            reservation_id=rid,
            outbound_flight_id=request.flight.outbound_flight_id,
            return_flight_id=request.flight.return_flight_id,
            cabin=request.flight.cabin,  # type: ignore[arg-type]
            passenger_count=request.flight.passenger_count,
            seats=request.flight.seats,
        )
    if participant == "hotel":
        hotel = request.hotel
        assert hotel is not None
        return hotel_pb.HotelServiceReserveRequest(
            reservation_id=rid,
            hotel_id=hotel.hotel_id,
            room_type=hotel.room_type,  # type: ignore[arg-type]
            check_in=date_message(hotel.check_in),
            check_out=date_message(hotel.check_out),
            room_count=hotel.room_count,
        )
    if participant == "car":
        car = request.car
        assert car is not None
        return car_pb.CarServiceReserveRequest(
            reservation_id=rid,
            city=car.city,
            car_class=car.car_class,  # type: ignore[arg-type]
            pick_up_date=date_message(car.pick_up),
            drop_off_date=date_message(car.drop_off),
        )
    if op is not None:
        return _operation_request(saga, trip, op, participant, rid)
    total = trip_total(saga, trip)
    assert total is not None, "payment and notify are reserved after every priced part"
    if participant == "payment":
        return _payment(request, rid, total)
    subject, body = confirmation_message(trip, total)
    return notify_pb.NotificationServiceReserveRequest(
        reservation_id=rid, recipient=request.email, subject=subject, body=body
    )


def _payment(request: TripRequest, rid: str, amount: Money, refund_of: list[str] | None = None) -> Any:
    return payment_pb.PaymentServiceReserveRequest(
        reservation_id=rid,
        customer_id=request.customer_id,
        payment_method_id=request.payment_method_id,
        amount=common_pb.Money(currency_code=amount.currency, minor_units=amount.minor_units),
        refund_of=refund_of or [],
    )


def _operation_request(saga: SagaDefinition, trip: Trip, op: Operation, participant: str, rid: str) -> Any:
    """A change's or a cancellation's payment (the difference charged, or refunded out of the trip's
    charges, latest first) or message."""
    before = booking(saga, trip, upto=op)
    amount = payment_of(saga, trip, op, before)
    assert amount is not None, "a change's payment and message are reserved after its new parts"
    currency = trip.request.currency
    if participant == saga.collector:
        if amount > 0:
            return _payment(trip.request, rid, Money(amount, currency))
        charges = [reservation_id(trip.trip_id, participant, r) for r in reversed(before.charges)]
        return _payment(trip.request, rid, Money(-amount, currency), charges)
    subject, body = operation_message(trip, op, Money(amount, currency), before.paid + amount)
    return notify_pb.NotificationServiceReserveRequest(
        reservation_id=rid, recipient=trip.request.email, subject=subject, body=body
    )


def confirmation_message(trip: Trip, total: Money) -> tuple[str, str]:
    request = trip.request
    lines = [f"Hello {request.name or request.customer_id},", "", f"your trip {trip.trip_id} is booked.", ""]
    lines += trip_lines(request)
    lines += ["", f"Total charged: {total}", "", "Have a good trip,", "tripmesh"]
    return f"Your trip {trip.trip_id} is booked", "\n".join(lines)


def operation_message(trip: Trip, op: Operation, moved: Money, paid_minor: int) -> tuple[str, str]:
    """The e-mail of a change (the trip as changed, the difference) or a cancellation (the refund, the fee)."""
    request = op.request or trip.request
    currency = trip.request.currency
    hello = [f"Hello {request.name or request.customer_id},", ""]
    if op.kind is OperationKind.CANCEL:
        lines = [*hello, f"your trip {trip.trip_id} is cancelled, as you asked.", ""]
        lines.append(f"Refunded: {Money(-moved.minor_units, currency)}")
        if op.fee_minor:
            lines.append(f"Cancellation fee kept under the fare rules: {Money(op.fee_minor, currency)}")
        lines += ["", "We hope to see you again,", "tripmesh"]
        return f"Your trip {trip.trip_id} is cancelled", "\n".join(lines)
    lines = [*hello, f"your trip {trip.trip_id} is changed. It is now:", "", *trip_lines(request), ""]
    if moved.minor_units > 0:
        lines.append(f"Price difference charged: {moved}")
    elif moved.minor_units < 0:
        lines.append(f"Price difference refunded: {Money(-moved.minor_units, currency)}")
    lines += [f"Total paid for the trip: {Money(paid_minor, currency)}", "", "Have a good trip,", "tripmesh"]
    return f"Your trip {trip.trip_id} is changed", "\n".join(lines)


def trip_lines(request: TripRequest) -> list[str]:
    cabin = flight_pb.Cabin.Name(request.flight.cabin).removeprefix("CABIN_").replace("_", " ").lower()  # type: ignore[arg-type]
    lines = [f"Flight: {request.flight.outbound_flight_id}, {request.flight.passenger_count} passenger(s), {cabin}"]
    if request.flight.return_flight_id:
        lines.append(f"Return flight: {request.flight.return_flight_id}")
    if request.flight.seats:
        lines.append(f"Seats: {', '.join(request.flight.seats)}")
    if request.hotel is not None:
        room = hotel_pb.RoomType.Name(request.hotel.room_type).removeprefix("ROOM_TYPE_").lower()  # type: ignore[arg-type]
        lines.append(
            f"Hotel: {request.hotel.hotel_id}, {request.hotel.room_count} {room} room(s), "
            f"{request.hotel.check_in} to {request.hotel.check_out}"
        )
    if request.car is not None:
        car_class = car_pb.CarClass.Name(request.car.car_class).removeprefix("CAR_CLASS_").lower()  # type: ignore[arg-type]
        lines.append(
            f"Car: {car_class} in {request.car.city}, picked up {request.car.pick_up}, returned {request.car.drop_off}"
        )
    return lines


def date_message(iso: str) -> common_pb.Date:
    year, month, day = (int(x) for x in iso.split("-"))
    return common_pb.Date(year=year, month=month, day=day)
