"""Typed clients of the participants; the only code that reads gRPC status codes.

Every call becomes an Outcome: OK, REFUSED (a business refusal or bad input: compensate, never
retry), TRANSIENT (the participant said so: resend), or UNKNOWN (no answer in time, connection cut:
the effect may have happened; resend, and cancel it on compensation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from coordinator.trip import parse_step_name
from services.kit.interceptors import TRIP_ID_METADATA
from services.kit.tls import TlsFiles, aio_channel, tls_files
from tripmesh.v1 import car_service_pb2_grpc as car_grpc
from tripmesh.v1 import flight_service_pb2_grpc as flight_grpc
from tripmesh.v1 import hotel_service_pb2_grpc as hotel_grpc
from tripmesh.v1 import notification_service_pb2_grpc as notify_grpc
from tripmesh.v1 import payment_service_pb2_grpc as payment_grpc


class OutcomeKind(StrEnum):
    OK = "OK"
    REFUSED = "REFUSED"
    TRANSIENT = "TRANSIENT"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    code: str = ""
    reason: str = ""
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)


REFUSAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def classify(error: grpc.RpcError) -> Outcome:
    code = error.code()
    reason = _reason(error)
    message = error.details() or ""
    if code in REFUSAL_CODES or (code is grpc.StatusCode.RESOURCE_EXHAUSTED and reason):
        kind = OutcomeKind.REFUSED
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        # UNAVAILABLE before the call reached a handler, or overload without a business reason.
        kind = OutcomeKind.TRANSIENT
    else:
        # DEADLINE_EXCEEDED, CANCELLED, INTERNAL, UNKNOWN, DATA_LOSS: it may have happened.
        kind = OutcomeKind.UNKNOWN
    return Outcome(kind, code=code.name, reason=reason, message=message)


def _reason(error: grpc.RpcError) -> str:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return ""
    if status is None:
        return ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


@dataclass(frozen=True)
class Addresses:
    flight: str
    hotel: str
    payment: str
    notify: str
    car: str


_STUBS: dict[str, Callable[[grpc.aio.Channel], Any]] = {
    "flight": flight_grpc.FlightServiceStub,
    "hotel": hotel_grpc.HotelServiceStub,
    "payment": payment_grpc.PaymentServiceStub,
    "notify": notify_grpc.NotificationServiceStub,
    "car": car_grpc.CarServiceStub,
}

_METHODS = {"reserve": "Reserve", "confirm": "Confirm", "cancel": "Cancel"}


# Retries are the engine's (one layer, every attempt logged). Reconnect quickly after a participant
# restarts: gRPC's default backoff grows to 120 s and spends whole retry budgets on "connection refused".
CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Participants:
    """One long-lived channel per participant, reused by every trip; with TLS on (kit.tls), each presents
    the coordinator's certificate, the identity participants require for Reserve/Confirm/Cancel."""

    def __init__(
        self,
        addresses: Addresses,
        *,
        call_timeout: float,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        tls: TlsFiles | bool | None = True,
    ) -> None:
        """`interceptors`: the tracing instrumentation's, when tracing is on; none otherwise. `tls`: True
        reads the coordinator's certificate from the environment (kit.tls), None or False is plaintext."""
        self.call_timeout = call_timeout
        files = tls_files("coordinator") if tls is True else (tls or None)
        self._channels = {
            name: aio_channel(getattr(addresses, name), files, CHANNEL_OPTIONS, interceptors=list(interceptors) or None)
            for name in _STUBS
        }
        self._stubs = {name: _STUBS[name](channel) for name, channel in self._channels.items()}

    async def call(self, step_name: str, request: Any, trip_id: str) -> Outcome:
        participant, action, _ = parse_step_name(step_name)
        method: Callable[..., Awaitable[Any]] = getattr(self._stubs[participant], _METHODS[action.value])
        try:
            response = await method(request, timeout=self.call_timeout, metadata=((TRIP_ID_METADATA, trip_id),))
        except grpc.aio.AioRpcError as error:
            return classify(error)
        reservation = response.reservation
        result = {
            "price_minor": reservation.price.minor_units,
            "currency": reservation.price.currency_code,
            "status": reservation.status,
        }
        if getattr(response, "seats", None):  # the flight's seats, per flight
            result["seats"] = {s.flight_id: list(s.seats) for s in response.seats}
        return Outcome(OutcomeKind.OK, result=result)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
