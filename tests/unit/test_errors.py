"""Typed errors to rich statuses (services/kit/status.py) and through the server interceptor to a client.

The interceptor half runs a real aio server on port 0 built by kit.server.build_server, hosting a tiny
generic-handler service, so it depends on no domain service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf import wrappers_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy.exc import IntegrityError, OperationalError

from services.kit.errors import (
    FieldViolation,
    HoldExpiredError,
    InvalidRequestError,
    PaymentDeclinedError,
    ReservationAbortedError,
    ReservationCancelledError,
    ReservationConflictError,
    ReservationNotFoundError,
    SoldOutError,
    TransientError,
    TripConflictError,
    TripmeshError,
    TripNotFoundError,
)
from services.kit.interceptors import TRIP_ID_METADATA
from services.kit.server import BuiltServer, ServiceBinding, build_server
from services.kit.status import error_info, to_grpc_status

pytestmark = pytest.mark.unit

DOMAIN = "tripmesh.v1.ProbeService"
GRPC_DETAILS_KEY = "grpc-status-details-bin"


def rich_status(status: grpc.Status) -> status_pb2.Status:
    blobs = [value for key, value in status.trailing_metadata if key == GRPC_DETAILS_KEY]
    assert len(blobs) == 1
    return status_pb2.Status.FromString(blobs[0])


def unpack(status: status_pb2.Status, kind: Any) -> list[Any]:
    found = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (ReservationConflictError("x"), grpc.StatusCode.ALREADY_EXISTS, "RESERVATION_CONFLICT"),
        (ReservationAbortedError("x"), grpc.StatusCode.ABORTED, "RESERVATION_CANCELLED"),
        (SoldOutError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED, "SOLD_OUT"),
        (PaymentDeclinedError("x"), grpc.StatusCode.FAILED_PRECONDITION, "CARD_DECLINED"),
        (
            PaymentDeclinedError("x", reason="INSUFFICIENT_FUNDS"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "INSUFFICIENT_FUNDS",
        ),
        (HoldExpiredError("x"), grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED"),
        (ReservationCancelledError("x"), grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_CANCELLED"),
        (ReservationNotFoundError("x"), grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND"),
        (TripConflictError("x"), grpc.StatusCode.ALREADY_EXISTS, "TRIP_CONFLICT"),
        (TripNotFoundError("x"), grpc.StatusCode.NOT_FOUND, "TRIP_NOT_FOUND"),
        (TransientError("x"), grpc.StatusCode.UNAVAILABLE, "TEMPORARILY_UNAVAILABLE"),
        (InvalidRequestError.of("f", "bad"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, TripmeshError) else str(v),
)
def test_code_and_error_info(error: TripmeshError, code: grpc.StatusCode, reason: str) -> None:
    status = to_grpc_status(error, DOMAIN)
    assert status.code == code
    assert status.details == error.message
    rich = rich_status(status)
    assert rich.code == getattr(code_pb2, code.name)
    assert rich.message == error.message
    [info] = unpack(rich, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (reason, DOMAIN)


def test_error_info_metadata_travels() -> None:
    error = PaymentDeclinedError("declined", reason="INSUFFICIENT_FUNDS", metadata={"payment_method_id": "pm-1"})
    [info] = unpack(rich_status(to_grpc_status(error, DOMAIN)), error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {"payment_method_id": "pm-1"}


def test_bad_request_names_every_field() -> None:
    error = InvalidRequestError(
        [FieldViolation("passenger_count", "must be 1..9"), FieldViolation("cabin", "must be set")]
    )
    status = to_grpc_status(error, DOMAIN)
    assert "passenger_count: must be 1..9" in status.details
    assert "cabin: must be set" in status.details
    rich = rich_status(status)
    [bad] = unpack(rich, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("passenger_count", "must be 1..9"),
        ("cabin", "must be set"),
    ]
    assert unpack(rich, error_details_pb2.RetryInfo) == []


def test_transient_error_carries_retry_info() -> None:
    rich = rich_status(to_grpc_status(TransientError("database unavailable"), DOMAIN))
    [retry] = unpack(rich, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 200
    assert unpack(rich, error_details_pb2.BadRequest) == []


@pytest.mark.parametrize("error", [SoldOutError("x"), HoldExpiredError("x"), ReservationNotFoundError("x")])
def test_refusals_carry_no_retry_info_nor_bad_request(error: TripmeshError) -> None:
    rich = rich_status(to_grpc_status(error, DOMAIN))
    assert unpack(rich, error_details_pb2.RetryInfo) == []
    assert unpack(rich, error_details_pb2.BadRequest) == []


# --- through the interceptor, over a real server ------------------------------------------------------

SERVICE = "tripmesh.test.Probe"
Text = wrappers_pb2.StringValue
probe_log = structlog.get_logger("tests.probe")


async def echo(request: Text, context: grpc.aio.ServicerContext) -> Text:
    probe_log.info("probe_echo", value=request.value)
    return Text(value=request.value)


async def sold_out(request: Text, context: grpc.aio.ServicerContext) -> Text:
    raise SoldOutError("flight TM101-20270315 has no economy seat left")


async def invalid(request: Text, context: grpc.aio.ServicerContext) -> Text:
    raise InvalidRequestError.of("passenger_count", "must be between 1 and 9, got 0")


async def transient(request: Text, context: grpc.aio.ServicerContext) -> Text:
    raise TransientError("database unavailable: locked")


async def boom(request: Text, context: grpc.aio.ServicerContext) -> Text:
    raise RuntimeError("secret detail")


async def aborts(request: Text, context: grpc.aio.ServicerContext) -> Text:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
    raise AssertionError("unreachable")


async def stream_then_sold_out(request: Text, context: grpc.aio.ServicerContext) -> AsyncIterator[Text]:
    yield Text(value="first")
    raise SoldOutError("gone mid-stream")


async def stream_then_boom(request: Text, context: grpc.aio.ServicerContext) -> AsyncIterator[Text]:
    yield Text(value="first")
    raise RuntimeError("secret detail")


def unary(behaviour: Callable[[Text, grpc.aio.ServicerContext], Awaitable[Text]]) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=Text.FromString, response_serializer=Text.SerializeToString
    )


def stream(behaviour: Callable[[Text, grpc.aio.ServicerContext], AsyncIterator[Text]]) -> grpc.RpcMethodHandler:
    return grpc.unary_stream_rpc_method_handler(
        behaviour, request_deserializer=Text.FromString, response_serializer=Text.SerializeToString
    )


async def database_gone(request: Text, context: grpc.aio.ServicerContext) -> Text:
    raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))


async def database_broken(request: Text, context: grpc.aio.ServicerContext) -> Text:
    raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed: trips.trip_id"))


def register(_servicer: Any, server: grpc.aio.Server) -> None:
    handlers = {
        "Echo": unary(echo),
        "SoldOut": unary(sold_out),
        "Invalid": unary(invalid),
        "Transient": unary(transient),
        "Boom": unary(boom),
        "DbGone": unary(database_gone),
        "DbBroken": unary(database_broken),
        "Aborts": unary(aborts),
        "StreamSoldOut": stream(stream_then_sold_out),
        "StreamBoom": stream(stream_then_boom),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture
async def probe() -> AsyncIterator[grpc.aio.Channel]:
    built: BuiltServer = build_server([ServiceBinding(SERVICE, register, None)], address="127.0.0.1:0", domain=DOMAIN)
    await built.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{built.port}") as channel:
            yield channel
    finally:
        await built.stop(None)


async def call(channel: grpc.aio.Channel, method: str, value: str = "hi", **kwargs: Any) -> Text:
    rpc = channel.unary_unary(
        f"/{SERVICE}/{method}", request_serializer=Text.SerializeToString, response_deserializer=Text.FromString
    )
    response: Text = await rpc(Text(value=value), timeout=5, **kwargs)
    return response


async def failure(channel: grpc.aio.Channel, method: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(channel, method)
    return caught.value


async def test_ok_passes_through(probe: grpc.aio.Channel) -> None:
    assert (await call(probe, "Echo", "hello")).value == "hello"


async def test_sold_out_reaches_client_as_resource_exhausted(probe: grpc.aio.Channel) -> None:
    error = await failure(probe, "SoldOut")
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "flight TM101-20270315 has no economy seat left"
    info = error_info(error)
    assert info is not None
    assert (info.reason, info.domain) == ("SOLD_OUT", DOMAIN)


async def test_invalid_request_reaches_client_with_bad_request(probe: grpc.aio.Channel) -> None:
    error = await failure(probe, "Invalid")
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "passenger_count" in (error.details() or "")
    status = rpc_status.from_call(error)
    assert status is not None
    [bad] = unpack(status, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["passenger_count"]


async def test_transient_reaches_client_with_retry_info(probe: grpc.aio.Channel) -> None:
    error = await failure(probe, "Transient")
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(error)
    assert status is not None
    [retry] = unpack(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 200


async def test_unexpected_exception_is_internal_and_generic(probe: grpc.aio.Channel) -> None:
    with structlog.testing.capture_logs() as logs:
        error = await failure(probe, "Boom")
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "secret detail" not in (error.details() or "")
    assert error.details() == "internal error; see the service log"
    for _key, value in error.trailing_metadata() or ():
        assert b"secret detail" not in (value if isinstance(value, bytes) else value.encode())
    assert error_info(error) is None
    # The traceback goes to the log instead.
    [entry] = [e for e in logs if e["event"] == "rpc_internal_error"]
    assert entry["exc_info"] is True
    assert entry["log_level"] == "error"


async def test_a_database_that_may_come_back_is_unavailable_not_internal(probe: grpc.aio.Channel) -> None:
    with structlog.testing.capture_logs() as logs:
        error = await failure(probe, "DbGone")
    assert error.code() is grpc.StatusCode.UNAVAILABLE, error
    assert "retry" in (error.details() or "") and "closed the connection" not in (error.details() or "")
    assert [e["event"] for e in logs] == ["rpc_database_unavailable", "rpc_refused"]
    # A broken constraint is a bug, not an outage: still INTERNAL.
    assert (await failure(probe, "DbBroken")).code() is grpc.StatusCode.INTERNAL


async def test_handler_abort_is_left_alone(probe: grpc.aio.Channel) -> None:
    error = await failure(probe, "Aborts")
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "not yours"


async def read_stream(channel: grpc.aio.Channel, method: str) -> tuple[list[str], grpc.aio.AioRpcError]:
    rpc = channel.unary_stream(
        f"/{SERVICE}/{method}", request_serializer=Text.SerializeToString, response_deserializer=Text.FromString
    )
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in rpc(Text(value="go"), timeout=5):
            received.append(item.value)
    return received, caught.value


async def test_streaming_errors_are_translated_too(probe: grpc.aio.Channel) -> None:
    received, error = await read_stream(probe, "StreamSoldOut")
    assert received == ["first"]
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info is not None and info.reason == "SOLD_OUT"

    received, error = await read_stream(probe, "StreamBoom")
    assert received == ["first"]
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "secret detail" not in (error.details() or "")


async def test_trip_id_metadata_is_bound_to_log_context(probe: grpc.aio.Channel) -> None:
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await call(probe, "Echo", "x", metadata=((TRIP_ID_METADATA, "t-123"),))
        await failure(probe, "SoldOut")  # no trip id: nothing bound, nothing leaked from the call before
    echo_entry = next(e for e in logs if e["event"] == "probe_echo")
    assert echo_entry["trip_id"] == "t-123"
    assert echo_entry["rpc"] == "Echo"
    refused = next(e for e in logs if e["event"] == "rpc_refused")
    assert "trip_id" not in refused
    assert (refused["rpc"], refused["reason"], refused["code"]) == ("SoldOut", "SOLD_OUT", "RESOURCE_EXHAUSTED")
