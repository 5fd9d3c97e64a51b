"""The flight participant as the shared runner starts it: tables, catalogue, inventory, servicer."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.flight import models
from services.flight.domain import FlightBooking
from services.flight.inventory import FlightInventory
from services.flight.servicer import FlightServicer
from services.kit.clock import Clock
from services.participant.runner import ParticipantSpec
from services.participant.store import ReservationStore
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import flight_service_pb2_grpc as flight_grpc


def _make_inventory(engine: AsyncEngine, _clock: Clock) -> FlightInventory:
    return FlightInventory(engine)


def _make_servicer(store: ReservationStore[FlightBooking], inventory: Any) -> FlightServicer:
    return FlightServicer(store, inventory)


SPEC = ParticipantSpec(
    component="flight",
    metadata=models.metadata,
    reservations=models.reservations,
    full_name=flight_pb.DESCRIPTOR.services_by_name["FlightService"].full_name,
    register=flight_grpc.add_FlightServiceServicer_to_server,
    make_domain=_make_inventory,
    make_servicer=_make_servicer,
)
