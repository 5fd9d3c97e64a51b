"""The notification participant as the contract tests see it: requests, bad inputs, conservation."""

from __future__ import annotations

from services.notify.audit import check_conservation as check_conservation  # re-exported for the tests
from services.notify.servicer import SPEC
from tests.support.participant_case import BadInput, ParticipantCase
from tripmesh.v1 import notification_service_pb2 as notify_pb
from tripmesh.v1 import notification_service_pb2_grpc as notify_grpc

# Notify holds nothing scarce: any number of messages can be staged at once. The P6 request is an
# ordinary one and the capacity a number no test reaches, so "at most capacity succeed" holds trivially;
# a P6 test should cap how many requests it sends (it must not send a multiple of this).
UNBOUNDED_CAPACITY = 1_000_000


def message(
    reservation_id: str,
    *,
    recipient: str = "ada@example.com",
    subject: str = "Your trip to Lisbon is booked",
    body: str = "Hello Ada,\n\nyour flight and hotel are confirmed.\n\ntripmesh",
) -> notify_pb.NotificationServiceReserveRequest:
    return notify_pb.NotificationServiceReserveRequest(
        reservation_id=reservation_id, recipient=recipient, subject=subject, body=body
    )


BAD_INPUTS = [
    BadInput("empty reservation id", lambda _rid: message(""), "reservation_id"),
    BadInput("malformed e-mail address", lambda rid: message(rid, recipient="not-an-email"), "recipient"),
    BadInput("two addresses", lambda rid: message(rid, recipient="ada@example.com, bob@example.com"), "recipient"),
    BadInput("empty subject", lambda rid: message(rid, subject=""), "subject"),
    BadInput("oversized subject", lambda rid: message(rid, subject="x" * 201), "subject"),
    BadInput("empty body", lambda rid: message(rid, body=""), "body"),
]


CASE = ParticipantCase(
    name="notify",
    spec=SPEC,
    stub=notify_grpc.NotificationServiceStub,
    reserve_request=message,
    other_request=lambda rid: message(rid, subject="Your trip to Porto is booked"),
    confirm_request=lambda rid: notify_pb.NotificationServiceConfirmRequest(reservation_id=rid),
    cancel_request=lambda rid: notify_pb.NotificationServiceCancelRequest(reservation_id=rid),
    get_request=lambda rid: notify_pb.NotificationServiceGetReservationRequest(reservation_id=rid),
    bad_inputs=BAD_INPUTS,
    refusals=[],  # a message has no business refusal: nothing is scarce and nothing is charged
    scarce_request=message,
    scarce_capacity=UNBOUNDED_CAPACITY,
    check_conservation=check_conservation,
    extra={"unbounded_capacity": True},
)
