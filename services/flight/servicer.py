"""FlightService adapter: proto to domain values and back. Confirm/Cancel/GetReservation are inherited."""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc

from services.flight import domain
from services.flight.domain import Cabin, FlightBooking, FlightOffer
from services.flight.inventory import FlightInventory
from services.flight.seats import requested_seats
from services.participant.convert import date_from_proto, date_to_proto, reservation_to_proto
from services.participant.servicer import ParticipantServicer
from services.participant.states import Record
from services.participant.store import ReservationStore
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import flight_service_pb2_grpc as flight_grpc

CABIN_FROM_PROTO = {
    flight_pb.CABIN_ECONOMY: Cabin.ECONOMY,
    flight_pb.CABIN_PREMIUM_ECONOMY: Cabin.PREMIUM_ECONOMY,
    flight_pb.CABIN_BUSINESS: Cabin.BUSINESS,
}
CABIN_TO_PROTO = {cabin: value for value, cabin in CABIN_FROM_PROTO.items()}


class FlightServicer(ParticipantServicer[FlightBooking], flight_grpc.FlightServiceServicer):
    confirm_response = flight_pb.FlightServiceConfirmResponse
    cancel_response = flight_pb.FlightServiceCancelResponse
    get_response = flight_pb.FlightServiceGetReservationResponse

    def __init__(self, store: ReservationStore[FlightBooking], inventory: FlightInventory) -> None:
        super().__init__(store)
        self.inventory = inventory

    async def SearchFlights(
        self, request: flight_pb.SearchFlightsRequest, context: grpc.aio.ServicerContext
    ) -> flight_pb.SearchFlightsResponse:
        query = domain.new_query(
            request.origin,
            request.destination,
            date_from_proto(request.departure_date) if request.HasField("departure_date") else None,
            request.passenger_count,
        )
        offers = await self.inventory.search(query)
        return flight_pb.SearchFlightsResponse(flights=[_flight_to_proto(offer) for offer in offers])

    async def Reserve(
        self, request: flight_pb.FlightServiceReserveRequest, context: grpc.aio.ServicerContext
    ) -> flight_pb.FlightServiceReserveResponse:
        booking = domain.new_booking(
            request.outbound_flight_id,
            request.return_flight_id,
            CABIN_FROM_PROTO.get(request.cabin),
            request.passenger_count,
        )
        booking = dataclasses.replace(booking, seats=requested_seats(request.seats, request.passenger_count))
        record = await self.store.reserve(request.reservation_id, booking)
        stored = FlightBooking.from_json(record.details)
        return flight_pb.FlightServiceReserveResponse(
            reservation=reservation_to_proto(record),
            flight_ids=list(stored.flight_ids),
            cabin=CABIN_TO_PROTO[stored.cabin],
            passenger_count=stored.passenger_count,
            **self.describe(record),
        )

    def describe(self, record: Record) -> dict[str, Any]:
        """The seats the reservation holds, per flight (read by the inventory in the call's transaction)."""
        seats: dict[str, list[str]] = record.facts or {}
        return {"seats": [flight_pb.FlightSeats(flight_id=f, seats=s) for f, s in seats.items()]}


def _flight_to_proto(offer: FlightOffer) -> flight_pb.Flight:
    return flight_pb.Flight(
        flight_id=offer.flight_id,
        flight_number=offer.flight_number,
        origin=offer.origin,
        destination=offer.destination,
        departure_date=date_to_proto(offer.departure_date),
        departure_time=offer.departure_time,
        duration_minutes=offer.duration_minutes,
        cabins=[
            flight_pb.CabinAvailability(
                cabin=CABIN_TO_PROTO[cabin.cabin],
                seats_capacity=cabin.capacity,
                seats_available=cabin.available,
                fare=common_pb.Money(currency_code=cabin.fare.currency, minor_units=cabin.fare.minor_units),
            )
            for cabin in offer.cabins
        ],
    )
