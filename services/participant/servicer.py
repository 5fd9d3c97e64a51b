"""The generic Confirm/Cancel/GetReservation adapter every participant servicer inherits.

A service's servicer adds only Reserve (its request carries domain details) and its own queries;
these three are the same everywhere but for the response message type, which the subclass names.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic

import grpc

from services.participant.convert import reservation_to_proto
from services.participant.domain import DetailsT
from services.participant.states import Record
from services.participant.store import ReservationStore


class ParticipantServicer(Generic[DetailsT]):
    confirm_response: ClassVar[type[Any]]
    cancel_response: ClassVar[type[Any]]
    get_response: ClassVar[type[Any]]

    def __init__(self, store: ReservationStore[DetailsT]) -> None:
        self.store = store

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a class whose bases put the generated servicer (whose methods answer UNIMPLEMENTED) first."""
        super().__init_subclass__(**kwargs)
        for name in ("Confirm", "Cancel", "GetReservation"):
            owner = next(k for k in cls.__mro__ if name in vars(k))
            if owner.__module__.endswith("_pb2_grpc"):
                raise TypeError(f"{cls.__name__}: list ParticipantServicer before {owner.__name__} in the bases")

    def describe(self, record: Record) -> dict[str, Any]:
        """Extra response fields a service adds to Confirm/Get answers, from `record.facts` (notify: the
        delivery state its domain read in the same transaction)."""
        return {}

    async def Confirm(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        record = await self.store.confirm(request.reservation_id)
        return self.confirm_response(reservation=reservation_to_proto(record), **self.describe(record))

    async def Cancel(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        record = await self.store.cancel(request.reservation_id)
        return self.cancel_response(reservation=reservation_to_proto(record))

    async def GetReservation(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        record = await self.store.get(request.reservation_id)
        return self.get_response(reservation=reservation_to_proto(record), **self.describe(record))
