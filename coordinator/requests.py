"""The participant request of every step, built from the trip (adapter: trip -> proto messages).

Reservation ids are derived from the trip id ("{trip_id}/flight"), so every resend of a step is the
same idempotent call. The payment amount is the sum of the priced reserves' results, which are in the
step log, so a resend after a crash asks for the same amount.
"""

from __future__ import annotations

from typing import Any

from coordinator.saga import SagaDefinition
from coordinator.trip import Action, Trip
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


def reservation_id(trip_id: str, participant: str) -> str:
    return f"{trip_id}/{participant}"


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


def build_request(saga: SagaDefinition, trip: Trip, step_name: str) -> Any:
    participant, action_name = step_name.split(".", 1)
    action = Action(action_name)
    rid = reservation_id(trip.trip_id, participant)
    if action is not Action.RESERVE:
        return _SIMPLE[(participant, action)](reservation_id=rid)
    request = trip.request
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
    total = trip_total(saga, trip)
    assert total is not None, "payment and notify are reserved after every priced part"
    if participant == "payment":
        return payment_pb.PaymentServiceReserveRequest(
            reservation_id=rid,
            customer_id=request.customer_id,
            payment_method_id=request.payment_method_id,
            amount=common_pb.Money(currency_code=total.currency, minor_units=total.minor_units),
        )
    subject, body = confirmation_message(trip, total)
    return notify_pb.NotificationServiceReserveRequest(
        reservation_id=rid, recipient=request.email, subject=subject, body=body
    )


def confirmation_message(trip: Trip, total: Money) -> tuple[str, str]:
    request = trip.request
    cabin = flight_pb.Cabin.Name(request.flight.cabin).removeprefix("CABIN_").replace("_", " ").lower()  # type: ignore[arg-type]
    lines = [
        f"Hello {request.name or request.customer_id},",
        "",
        f"your trip {trip.trip_id} is booked.",
        "",
        f"Flight: {request.flight.outbound_flight_id}, {request.flight.passenger_count} passenger(s), {cabin}",
    ]
    if request.flight.return_flight_id:
        lines.append(f"Return flight: {request.flight.return_flight_id}")
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
    lines += ["", f"Total charged: {total}", "", "Have a good trip,", "tripmesh"]
    return f"Your trip {trip.trip_id} is booked", "\n".join(lines)


def date_message(iso: str) -> common_pb.Date:
    year, month, day = (int(x) for x in iso.split("-"))
    return common_pb.Date(year=year, month=month, day=day)
