"""HotelService adapter: proto to domain values and back. Confirm/Cancel/GetReservation are inherited."""

from __future__ import annotations

from datetime import date
from typing import Literal

import grpc

from services.hotel import domain
from services.hotel.domain import HotelBooking, HotelOffer, RoomType
from services.hotel.inventory import HotelInventory
from services.kit.money import Money
from services.participant.convert import date_from_proto, reservation_to_proto
from services.participant.servicer import ParticipantServicer
from services.participant.store import ReservationStore
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import hotel_service_pb2_grpc as hotel_grpc

ROOM_TYPE_FROM_PROTO = {
    hotel_pb.ROOM_TYPE_STANDARD: RoomType.STANDARD,
    hotel_pb.ROOM_TYPE_DELUXE: RoomType.DELUXE,
    hotel_pb.ROOM_TYPE_SUITE: RoomType.SUITE,
}
ROOM_TYPE_TO_PROTO = {room_type: value for value, room_type in ROOM_TYPE_FROM_PROTO.items()}


class HotelServicer(ParticipantServicer[HotelBooking], hotel_grpc.HotelServiceServicer):
    confirm_response = hotel_pb.HotelServiceConfirmResponse
    cancel_response = hotel_pb.HotelServiceCancelResponse
    get_response = hotel_pb.HotelServiceGetReservationResponse

    def __init__(self, store: ReservationStore[HotelBooking], inventory: HotelInventory) -> None:
        super().__init__(store)
        self.inventory = inventory

    async def SearchHotels(
        self, request: hotel_pb.SearchHotelsRequest, context: grpc.aio.ServicerContext
    ) -> hotel_pb.SearchHotelsResponse:
        query = domain.new_query(
            request.city,
            _date(request, "check_in"),
            _date(request, "check_out"),
            request.room_count,
        )
        offers = await self.inventory.search(query)
        return hotel_pb.SearchHotelsResponse(hotels=[_hotel_to_proto(offer) for offer in offers])

    async def Reserve(
        self, request: hotel_pb.HotelServiceReserveRequest, context: grpc.aio.ServicerContext
    ) -> hotel_pb.HotelServiceReserveResponse:
        booking = domain.new_booking(
            request.hotel_id,
            ROOM_TYPE_FROM_PROTO.get(request.room_type),
            _date(request, "check_in"),
            _date(request, "check_out"),
            request.room_count,
        )
        record = await self.store.reserve(request.reservation_id, booking)
        stored = HotelBooking.from_json(record.details)
        return hotel_pb.HotelServiceReserveResponse(
            reservation=reservation_to_proto(record),
            hotel_id=stored.hotel_id,
            room_type=ROOM_TYPE_TO_PROTO[stored.room_type],
            nights=stored.nights,
            room_count=stored.room_count,
        )


def _date(
    request: hotel_pb.SearchHotelsRequest | hotel_pb.HotelServiceReserveRequest, field: Literal["check_in", "check_out"]
) -> date | None:
    """A request's date field, or None when it is unset or impossible (validation names the field)."""
    return date_from_proto(getattr(request, field)) if request.HasField(field) else None


def _money(value: Money) -> common_pb.Money:
    return common_pb.Money(currency_code=value.currency, minor_units=value.minor_units)


def _hotel_to_proto(offer: HotelOffer) -> hotel_pb.Hotel:
    return hotel_pb.Hotel(
        hotel_id=offer.hotel_id,
        name=offer.name,
        city=offer.city,
        stars=offer.stars,
        rooms=[
            hotel_pb.RoomOffer(
                room_type=ROOM_TYPE_TO_PROTO[room.room_type],
                rooms_available=room.available,
                nightly_rate=_money(room.nightly_rate),
                total=_money(room.total),
            )
            for room in offer.rooms
        ],
    )
