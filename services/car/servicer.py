"""CarService adapter: proto to domain values and back. Confirm/Cancel/GetReservation are inherited."""

from __future__ import annotations

from datetime import date
from typing import Literal

import grpc

from services.car import domain
from services.car.domain import CarClass, CarOffer, CarRental
from services.car.inventory import CarInventory
from services.kit.money import Money
from services.participant.convert import date_from_proto, reservation_to_proto
from services.participant.servicer import ParticipantServicer
from services.participant.store import ReservationStore
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import car_service_pb2_grpc as car_grpc
from tripmesh.v1 import common_pb2 as common_pb

CAR_CLASS_FROM_PROTO = {
    car_pb.CAR_CLASS_ECONOMY: CarClass.ECONOMY,
    car_pb.CAR_CLASS_COMPACT: CarClass.COMPACT,
    car_pb.CAR_CLASS_MIDSIZE: CarClass.MIDSIZE,
    car_pb.CAR_CLASS_SUV: CarClass.SUV,
    car_pb.CAR_CLASS_LUXURY: CarClass.LUXURY,
}
CAR_CLASS_TO_PROTO = {car_class: value for value, car_class in CAR_CLASS_FROM_PROTO.items()}


class CarServicer(ParticipantServicer[CarRental], car_grpc.CarServiceServicer):
    confirm_response = car_pb.CarServiceConfirmResponse
    cancel_response = car_pb.CarServiceCancelResponse
    get_response = car_pb.CarServiceGetReservationResponse

    def __init__(self, store: ReservationStore[CarRental], inventory: CarInventory) -> None:
        super().__init__(store)
        self.inventory = inventory

    async def SearchCars(
        self, request: car_pb.SearchCarsRequest, context: grpc.aio.ServicerContext
    ) -> car_pb.SearchCarsResponse:
        query = domain.new_query(request.city, _date(request, "pick_up_date"), _date(request, "drop_off_date"))
        offers = await self.inventory.search(query)
        return car_pb.SearchCarsResponse(city=query.city, cars=[_offer_to_proto(offer) for offer in offers])

    async def Reserve(
        self, request: car_pb.CarServiceReserveRequest, context: grpc.aio.ServicerContext
    ) -> car_pb.CarServiceReserveResponse:
        rental = domain.new_rental(
            request.city,
            CAR_CLASS_FROM_PROTO.get(request.car_class),
            _date(request, "pick_up_date"),
            _date(request, "drop_off_date"),
        )
        record = await self.store.reserve(request.reservation_id, rental)
        stored = CarRental.from_json(record.details)
        return car_pb.CarServiceReserveResponse(
            reservation=reservation_to_proto(record),
            city=stored.city,
            car_class=CAR_CLASS_TO_PROTO[stored.car_class],
            days=stored.days,
        )


def _date(
    request: car_pb.SearchCarsRequest | car_pb.CarServiceReserveRequest,
    field: Literal["pick_up_date", "drop_off_date"],
) -> date | None:
    """A request's date field, or None when it is unset or impossible (validation names the field)."""
    return date_from_proto(getattr(request, field)) if request.HasField(field) else None


def _money(value: Money) -> common_pb.Money:
    return common_pb.Money(currency_code=value.currency, minor_units=value.minor_units)


def _offer_to_proto(offer: CarOffer) -> car_pb.CarOffer:
    return car_pb.CarOffer(
        car_class=CAR_CLASS_TO_PROTO[offer.car_class],
        cars_available=offer.available,
        daily_rate=_money(offer.daily_rate),
        total=_money(offer.total),
    )
