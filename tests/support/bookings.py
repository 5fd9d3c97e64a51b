"""Trips with a known outcome on the seeded catalogue, for tests that need one of each."""

from __future__ import annotations

from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb


def lisbon(trip_id: str, payment_method: str = "pm_ada_visa") -> trip_pb.BookTripRequest:
    """One economy seat LHR -> LIS and two nights at Casa Alfama: confirmed, or cancelled with pm_ada_declined."""
    return trip_pb.BookTripRequest(
        trip_id=trip_id,
        customer=trip_pb.Customer(customer_id="cust-ada", email="ada@example.com"),
        flight=trip_pb.TripFlight(
            outbound_flight_id="TM101-20270315", cabin=flight_pb.CABIN_ECONOMY, passenger_count=1
        ),
        hotel=trip_pb.TripHotel(
            hotel_id="lis-alfama",
            room_type=hotel_pb.ROOM_TYPE_STANDARD,
            check_in=common_pb.Date(year=2027, month=3, day=15),
            check_out=common_pb.Date(year=2027, month=3, day=17),
        ),
        payment_method_id=payment_method,
    )


def vienna_sold_out(trip_id: str) -> trip_pb.BookTripRequest:
    """Nine in business on the 8-seat ZRH -> VIE jet: flight.reserve refused (SOLD_OUT), the hotel released."""
    return trip_pb.BookTripRequest(
        trip_id=trip_id,
        customer=trip_pb.Customer(customer_id="cust-ada", email="ada@example.com"),
        flight=trip_pb.TripFlight(
            outbound_flight_id="TM401-20270316", cabin=flight_pb.CABIN_BUSINESS, passenger_count=9
        ),
        hotel=trip_pb.TripHotel(
            hotel_id="vie-ringstrasse",
            room_type=hotel_pb.ROOM_TYPE_DELUXE,
            check_in=common_pb.Date(year=2027, month=3, day=16),
            check_out=common_pb.Date(year=2027, month=3, day=19),
        ),
        payment_method_id="pm_ada_visa",
    )
