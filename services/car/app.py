"""The car participant as the shared runner starts it: tables, inventory, servicer (its migrations and
fleet seed are services/kit/migrate.py's)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.car import models
from services.car.domain import CarRental
from services.car.inventory import CarInventory
from services.car.servicer import CarServicer
from services.kit.clock import Clock
from services.participant.runner import ParticipantSpec
from services.participant.store import ReservationStore
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import car_service_pb2_grpc as car_grpc


def _make_inventory(engine: AsyncEngine, _clock: Clock) -> CarInventory:
    return CarInventory(engine)


def _make_servicer(store: ReservationStore[CarRental], inventory: Any) -> CarServicer:
    return CarServicer(store, inventory)


SPEC = ParticipantSpec(
    component="car",
    metadata=models.metadata,
    reservations=models.reservations,
    full_name=car_pb.DESCRIPTOR.services_by_name["CarService"].full_name,
    register=car_grpc.add_CarServiceServicer_to_server,
    make_domain=_make_inventory,
    make_servicer=_make_servicer,
)
