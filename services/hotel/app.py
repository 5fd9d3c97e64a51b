"""The hotel participant as the shared runner starts it: tables, catalogue, inventory, servicer."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.hotel import models
from services.hotel.domain import HotelBooking
from services.hotel.inventory import HotelInventory
from services.hotel.servicer import HotelServicer
from services.kit.clock import Clock
from services.participant.runner import ParticipantSpec
from services.participant.store import ReservationStore
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import hotel_service_pb2_grpc as hotel_grpc


def _make_inventory(engine: AsyncEngine, _clock: Clock) -> HotelInventory:
    return HotelInventory(engine)


def _make_servicer(store: ReservationStore[HotelBooking], inventory: Any) -> HotelServicer:
    return HotelServicer(store, inventory)


SPEC = ParticipantSpec(
    component="hotel",
    metadata=models.metadata,
    reservations=models.reservations,
    full_name=hotel_pb.DESCRIPTOR.services_by_name["HotelService"].full_name,
    register=hotel_grpc.add_HotelServiceServicer_to_server,
    make_domain=_make_inventory,
    make_servicer=_make_servicer,
)
