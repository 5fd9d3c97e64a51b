"""Typed errors raised by handlers; kit.interceptors turns each into a rich google.rpc.Status.

A handler never calls context.abort itself: it raises one of these, and one interceptor builds the
status (code, message, ErrorInfo with the reason, BadRequest or RetryInfo where they apply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class TripmeshError(Exception):
    """Base of every error that travels to the caller as a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "ERROR_REASON_UNSPECIFIED"
    retry_after_seconds: float | None = None

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidRequestError(TripmeshError):
    """Malformed or impossible input (P7): INVALID_ARGUMENT with one BadRequest violation per field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"

    def __init__(self, violations: Sequence[FieldViolation]):
        self.violations = tuple(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def of(cls, field: str, description: str) -> InvalidRequestError:
        return cls([FieldViolation(field, description)])


class ReservationConflictError(TripmeshError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "RESERVATION_CONFLICT"


class ReservationAbortedError(TripmeshError):
    code = grpc.StatusCode.ABORTED
    reason = "RESERVATION_CANCELLED"


class SoldOutError(TripmeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "SOLD_OUT"


class PaymentDeclinedError(TripmeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "CARD_DECLINED"


class SeatTakenError(TripmeshError):
    """A seat asked for by name is held by another reservation."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "SEAT_TAKEN"


class HoldExpiredError(TripmeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "HOLD_EXPIRED"


class ReservationCancelledError(TripmeshError):
    """Confirm of a cancelled reservation."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "RESERVATION_CANCELLED"


class ChargeNotCapturedError(TripmeshError):
    """A refund drawn on a payment that is not a captured charge (held, cancelled, expired, a refund)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "CHARGE_NOT_CAPTURED"


class RefundExceedsCaptureError(TripmeshError):
    """A refund larger than what its charges still have to give back."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "REFUND_EXCEEDS_CAPTURE"


class RefundAlreadyPaidError(TripmeshError):
    """Cancel of a refund paid out, or of a charge that refunds were drawn on: money already went back."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "REFUND_ALREADY_PAID"


class ReservationNotFoundError(TripmeshError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "RESERVATION_NOT_FOUND"


class TripConflictError(TripmeshError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "TRIP_CONFLICT"


class TripNotFoundError(TripmeshError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "TRIP_NOT_FOUND"


class TransientError(TripmeshError):
    """A dependency is down or overloaded: UNAVAILABLE with RetryInfo; the caller resends."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "TEMPORARILY_UNAVAILABLE"
    retry_after_seconds = 0.2


class TripNotRetriableError(TripmeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "TRIP_NOT_RETRIABLE"


class TripNotChangeableError(TripmeshError):
    """ChangeTrip of a trip that is not CONFIRMED."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "TRIP_NOT_CHANGEABLE"


class ChangeConflictError(TripmeshError):
    """A change id known for the trip with a different change."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "CHANGE_CONFLICT"


class TripNotCancellableError(TripmeshError):
    """CancelTrip of a trip that is neither CONFIRMED nor cancelled already."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "TRIP_NOT_CANCELLABLE"


class DefinitionUnknownError(TripmeshError):
    """A trip started under a saga definition version this coordinator cannot drive."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "DEFINITION_UNKNOWN"


class InjectedFaultError(TripmeshError):
    """A fault injected by configuration (kit.faults): any code and reason, answered like a real error."""

    def __init__(
        self, message: str, *, code: grpc.StatusCode, reason: str, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.code = code
        if code is grpc.StatusCode.UNAVAILABLE:
            self.retry_after_seconds = TransientError.retry_after_seconds


class PermissionDeniedError(TripmeshError):
    """A caller whose certificate identity may not call this method (kit.authz)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "CALLER_NOT_ALLOWED"


class OverloadedError(TripmeshError):
    """More work offered than admitted: RESOURCE_EXHAUSTED with RetryInfo, nothing was done or written."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "OVERLOADED"
    retry_after_seconds = 1.0
