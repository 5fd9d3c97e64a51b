"""NotificationService over gRPC: proto in, domain values to the store, proto out; and the service's SPEC."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.clock import Clock
from services.notify import models, outbox
from services.notify.domain import DeliveryState, MessageDetails, NotifyDomain, validate_message
from services.participant.convert import reservation_to_proto
from services.participant.runner import ParticipantSpec
from services.participant.servicer import ParticipantServicer
from services.participant.states import Record
from services.participant.store import ReservationStore
from tripmesh.v1 import notification_service_pb2 as notify_pb
from tripmesh.v1 import notification_service_pb2_grpc as notify_grpc

DELIVERY_STATE_TO_PROTO = {
    DeliveryState.PENDING: notify_pb.DELIVERY_STATE_PENDING,
    DeliveryState.SENT: notify_pb.DELIVERY_STATE_SENT,
    DeliveryState.DISCARDED: notify_pb.DELIVERY_STATE_DISCARDED,
}


def details_from_proto(request: notify_pb.NotificationServiceReserveRequest) -> MessageDetails:
    return MessageDetails(
        reservation_id=request.reservation_id, recipient=request.recipient, subject=request.subject, body=request.body
    )


class NotificationServicer(ParticipantServicer[MessageDetails], notify_grpc.NotificationServiceServicer):
    confirm_response = notify_pb.NotificationServiceConfirmResponse
    cancel_response = notify_pb.NotificationServiceCancelResponse
    get_response = notify_pb.NotificationServiceGetReservationResponse

    def __init__(self, store: ReservationStore[MessageDetails], domain: NotifyDomain) -> None:
        super().__init__(store)
        self.domain = domain

    def describe(self, record: Record) -> dict[str, Any]:
        """The delivery state its domain read in the call's transaction (none for Reserve's answer)."""
        if record.facts is None:
            return {}
        return {"delivery_state": DELIVERY_STATE_TO_PROTO[record.facts]}

    async def Reserve(
        self, request: notify_pb.NotificationServiceReserveRequest, context: grpc.aio.ServicerContext
    ) -> notify_pb.NotificationServiceReserveResponse:
        details = details_from_proto(request)
        validate_message(details)
        record = await self.store.reserve(details.reservation_id, details)
        return notify_pb.NotificationServiceReserveResponse(reservation=reservation_to_proto(record))


def _make_servicer(store: ReservationStore[Any], domain: Any) -> NotificationServicer:
    return NotificationServicer(store, domain)


def _make_domain(engine: AsyncEngine, clock: Clock) -> NotifyDomain:
    # Confirm runs on the database's worker thread: the doorbell is rung on the loop that owns it.
    loop = asyncio.get_running_loop()
    doorbell = outbox.doorbell_for(engine)

    def ring() -> None:
        loop.call_soon_threadsafe(doorbell.set)

    return NotifyDomain(engine, clock, on_queued=ring)


SPEC = ParticipantSpec(
    component="notify",
    metadata=models.metadata,
    reservations=models.reservations,
    full_name=notify_pb.DESCRIPTOR.services_by_name["NotificationService"].full_name,
    register=notify_grpc.add_NotificationServiceServicer_to_server,
    make_domain=_make_domain,
    make_servicer=_make_servicer,
    background=outbox.background,
)
