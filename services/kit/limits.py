"""Limits on input, checked on every request of every server before any handler runs.

`RequestGuard` (installed by kit.server.build_server) does three things for each unary request:

1. decodes it itself, so bytes that are not a valid message (a truncated field, a wrong wire type,
   invalid UTF-8 in a string) answer INVALID_ARGUMENT instead of gRPC's own UNKNOWN;
2. checks every string and every list of the message, nested ones included, against a maximum length:
   `DEFAULT_MAX_STRING` characters and `DEFAULT_MAX_ITEMS` items unless `FIELD_LIMITS` says otherwise;
3. refuses any string that looks like a payment card number (kit.redact): payment methods are tokens
   (`pm_ada_visa`), so a PAN in any field is a mistake, and refusing it keeps it out of every database
   and log downstream.

Each violation names the field and the limit (INVALID_ARGUMENT with a BadRequest detail). The size of
the message itself is bounded by gRPC's max receive length (kit.server): beyond it the call ends with
RESOURCE_EXHAUSTED before a byte of it is parsed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.kit.errors import FieldViolation, InvalidRequestError
from services.kit.redact import looks_like_card_number
from services.kit.wrapping import HandlerCache, check_first

DEFAULT_MAX_STRING = 256
DEFAULT_MAX_ITEMS = 64
# Fields allowed more than the default, by full proto name.
FIELD_LIMITS: Mapping[str, int] = {
    "tripmesh.v1.NotificationServiceReserveRequest.body": 16 * 1024,
    "tripmesh.v1.NotificationServiceReserveRequest.subject": 512,
}


@dataclass(frozen=True)
class Undecodable:
    """What the guard's deserializer hands on when the bytes are not a valid request message."""

    type_name: str
    error: str


def _limit(field: FieldDescriptor, default: int) -> int:
    return FIELD_LIMITS.get(field.full_name, default)


def message_violations(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every field of `message` (recursively) over its length limit, or holding a card number."""
    violations: list[FieldViolation] = []
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        repeated = field.is_repeated
        values = list(value) if repeated else [value]
        if repeated and len(values) > (limit := _limit(field, DEFAULT_MAX_ITEMS)):
            violations.append(FieldViolation(path, f"at most {limit} items, got {len(values)}"))
            continue
        for index, item in enumerate(values):
            where = f"{path}[{index}]" if repeated else path
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                violations.extend(message_violations(item, f"{where}."))
            elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                violations.extend(_string_violations(field, where, item))
    return violations


def _string_violations(field: FieldDescriptor, where: str, value: str | bytes) -> list[FieldViolation]:
    limit = _limit(field, DEFAULT_MAX_STRING)
    if len(value) > limit:
        return [FieldViolation(where, f"at most {limit} characters, got {len(value)}")]
    if isinstance(value, str) and looks_like_card_number(value):
        return [
            FieldViolation(
                where, "looks like a payment card number: card numbers are never accepted, use a payment method token"
            )
        ]
    return []


def check_request(request: Any) -> None:
    """Raise InvalidRequestError for an undecodable request or one over its limits."""
    if isinstance(request, Undecodable):
        raise InvalidRequestError.of("request", f"is not a valid {request.type_name} message: {request.error}")
    if isinstance(request, Message):
        violations = message_violations(request)
        if violations:
            raise InvalidRequestError(violations)


def _safe_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    owner = getattr(deserialize, "__self__", None)
    type_name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def safe(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as error:  # noqa: BLE001 - any parse failure is the caller's bad input
            return Undecodable(type_name, str(error) or type(error).__name__)

    return safe


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Decode safely and check limits before the handler; errors are raised as InvalidRequestError, so
    install it inside kit.interceptors.ServerInterceptor, which turns them into rich statuses."""

    def __init__(self) -> None:
        self._cache = HandlerCache()

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        return self._cache.get(details.method, handler, _guarded)


def _guarded(handler: Any) -> Any:
    return check_first(
        handler,
        lambda request, _context: check_request(request),
        request_deserializer=_safe_deserializer(handler.request_deserializer),
    )
