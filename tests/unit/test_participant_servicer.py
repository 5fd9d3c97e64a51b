"""The generic ParticipantServicer (Confirm/Cancel/GetReservation) with a fake store.

STYLE.md asks for servicers tested through grpc_testing. grpc_testing cannot drive this servicer:
its server calls the method synchronously in a thread and takes the returned value as the response,
so an `async def` method yields an un-awaited coroutine object as the "response" (checked with
grpc_testing.server_from_dictionary + invoke_unary_unary on grpcio-testing 1.85). Rather than wrap
the servicer in a sync adapter that exists only for tests, these tests await the servicer methods
directly with a fake store and a stand-in context; the real aio server path (interceptor, status
details, serialisation) is covered by tests/unit/test_errors.py and the contract tests.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from services.kit.errors import (
    HoldExpiredError,
    InvalidRequestError,
    ReservationCancelledError,
    ReservationNotFoundError,
)
from services.participant.servicer import ParticipantServicer
from services.participant.states import Record, Status
from services.participant.store import check_reservation_id, fingerprint
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import notification_service_pb2 as notify_pb

pytestmark = pytest.mark.unit

CREATED = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
HELD = Record(
    reservation_id="trip-1/flight",
    status=Status.HELD,
    fingerprint="fp",
    details={"seats": 2},
    price_minor=25_900,
    currency="EUR",
    expire_at=CREATED + timedelta(minutes=15),
    created_at=CREATED,
    updated_at=CREATED,
)


class FakeStore:
    """Answers from a dict of records, or raises the error it was given; records every call."""

    def __init__(self, records: dict[str, Record] | None = None, error: Exception | None = None) -> None:
        self.records = dict(records or {})
        self.error = error
        self.calls: list[tuple[str, str]] = []

    def _answer(self, call: str, reservation_id: str, record: Record | None) -> Record:
        self.calls.append((call, reservation_id))
        if self.error is not None:
            raise self.error
        if record is None:
            raise ReservationNotFoundError(reservation_id)
        return record

    async def confirm(self, reservation_id: str) -> Record:
        current = self.records.get(reservation_id)
        confirmed = None if current is None else replace(current, status=Status.CONFIRMED)
        return self._answer("confirm", reservation_id, confirmed)

    async def cancel(self, reservation_id: str) -> Record:
        current = self.records.get(reservation_id)
        cancelled = None if current is None else replace(current, status=Status.CANCELLED)
        return self._answer("cancel", reservation_id, cancelled)

    async def get(self, reservation_id: str) -> Record:
        return self._answer("get", reservation_id, self.records.get(reservation_id))


class FakeContext:
    """The servicer must not touch its context (errors are raised, not aborted)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"servicer used context.{name}")


class FlightLikeServicer(ParticipantServicer[Any]):
    confirm_response = flight_pb.FlightServiceConfirmResponse
    cancel_response = flight_pb.FlightServiceCancelResponse
    get_response = flight_pb.FlightServiceGetReservationResponse


class NotifyLikeServicer(ParticipantServicer[Any]):
    confirm_response = notify_pb.NotificationServiceConfirmResponse
    cancel_response = notify_pb.NotificationServiceCancelResponse
    get_response = notify_pb.NotificationServiceGetReservationResponse

    def describe(self, record: Record) -> dict[str, Any]:
        return {"delivery_state": notify_pb.DELIVERY_STATE_PENDING}


def servicer(cls: type[ParticipantServicer[Any]], store: FakeStore) -> ParticipantServicer[Any]:
    return cls(store)  # type: ignore[arg-type]


async def test_get_maps_every_field_of_a_hold() -> None:
    store = FakeStore({HELD.reservation_id: HELD})
    response = await servicer(FlightLikeServicer, store).GetReservation(
        flight_pb.FlightServiceGetReservationRequest(reservation_id=HELD.reservation_id), FakeContext()
    )
    assert isinstance(response, flight_pb.FlightServiceGetReservationResponse)
    reservation = response.reservation
    assert reservation.reservation_id == "trip-1/flight"
    assert reservation.status == common_pb.RESERVATION_STATUS_HELD
    assert (reservation.price.currency_code, reservation.price.minor_units) == ("EUR", 25_900)
    assert reservation.expire_time.ToDatetime(tzinfo=UTC) == HELD.expire_at
    assert reservation.create_time.ToDatetime(tzinfo=UTC) == CREATED
    assert reservation.update_time.ToDatetime(tzinfo=UTC) == CREATED
    assert reservation.tombstone is False
    assert store.calls == [("get", "trip-1/flight")]


async def test_confirm_answers_confirmed_without_expire_time() -> None:
    store = FakeStore({HELD.reservation_id: HELD})
    response = await servicer(FlightLikeServicer, store).Confirm(
        flight_pb.FlightServiceConfirmRequest(reservation_id=HELD.reservation_id), FakeContext()
    )
    assert isinstance(response, flight_pb.FlightServiceConfirmResponse)
    assert response.reservation.status == common_pb.RESERVATION_STATUS_CONFIRMED
    assert not response.reservation.HasField("expire_time")
    assert store.calls == [("confirm", "trip-1/flight")]


async def test_cancel_answers_cancelled() -> None:
    store = FakeStore({HELD.reservation_id: HELD})
    response = await servicer(FlightLikeServicer, store).Cancel(
        flight_pb.FlightServiceCancelRequest(reservation_id=HELD.reservation_id), FakeContext()
    )
    assert isinstance(response, flight_pb.FlightServiceCancelResponse)
    assert response.reservation.status == common_pb.RESERVATION_STATUS_CANCELLED
    assert not response.reservation.HasField("expire_time")
    assert store.calls == [("cancel", "trip-1/flight")]


async def test_tombstone_is_reported() -> None:
    tombstone = replace(
        HELD, status=Status.CANCELLED, fingerprint="", details={}, price_minor=0, expire_at=None, tombstone=True
    )
    store = FakeStore({"ghost": replace(tombstone, reservation_id="ghost")})
    response = await servicer(FlightLikeServicer, store).GetReservation(
        flight_pb.FlightServiceGetReservationRequest(reservation_id="ghost"), FakeContext()
    )
    assert response.reservation.tombstone is True
    assert response.reservation.status == common_pb.RESERVATION_STATUS_CANCELLED
    assert response.reservation.price.minor_units == 0


@pytest.mark.parametrize("status", list(Status))
async def test_every_status_maps_to_its_proto_value(status: Status) -> None:
    store = FakeStore({"r": replace(HELD, reservation_id="r", status=status)})
    response = await servicer(FlightLikeServicer, store).GetReservation(
        flight_pb.FlightServiceGetReservationRequest(reservation_id="r"), FakeContext()
    )
    assert common_pb.ReservationStatus.Name(response.reservation.status) == f"RESERVATION_STATUS_{status.value}"
    assert response.reservation.HasField("expire_time") is (status is Status.HELD)


async def test_describe_adds_service_fields_to_confirm_and_get_only() -> None:
    store = FakeStore({HELD.reservation_id: HELD})
    notify = servicer(NotifyLikeServicer, store)
    confirmed = await notify.Confirm(
        notify_pb.NotificationServiceConfirmRequest(reservation_id=HELD.reservation_id), FakeContext()
    )
    got = await notify.GetReservation(
        notify_pb.NotificationServiceGetReservationRequest(reservation_id=HELD.reservation_id), FakeContext()
    )
    cancelled = await notify.Cancel(
        notify_pb.NotificationServiceCancelRequest(reservation_id=HELD.reservation_id), FakeContext()
    )
    assert confirmed.delivery_state == notify_pb.DELIVERY_STATE_PENDING
    assert got.delivery_state == notify_pb.DELIVERY_STATE_PENDING
    assert isinstance(cancelled, notify_pb.NotificationServiceCancelResponse)


NOT_FOUND = ReservationNotFoundError("r")
EMPTY_ID = InvalidRequestError.of("reservation_id", "must not be empty")


@pytest.mark.parametrize(
    ("method", "request_message", "error"),
    [
        ("Confirm", flight_pb.FlightServiceConfirmRequest(reservation_id="r"), HoldExpiredError("expired")),
        ("Confirm", flight_pb.FlightServiceConfirmRequest(reservation_id="r"), ReservationCancelledError("gone")),
        ("Confirm", flight_pb.FlightServiceConfirmRequest(reservation_id="r"), ReservationNotFoundError("r")),
        ("GetReservation", flight_pb.FlightServiceGetReservationRequest(reservation_id="r"), NOT_FOUND),
        ("Cancel", flight_pb.FlightServiceCancelRequest(reservation_id=""), EMPTY_ID),
    ],
    ids=["confirm-expired", "confirm-cancelled", "confirm-unknown", "get-unknown", "cancel-empty-id"],
)
async def test_store_errors_propagate_unchanged(method: str, request_message: Any, error: Exception) -> None:
    """The servicer raises the store's typed error as is; the interceptor (not the servicer) turns it into a status."""
    handler = getattr(servicer(FlightLikeServicer, FakeStore(error=error)), method)
    with pytest.raises(type(error)) as caught:
        await handler(request_message, FakeContext())
    assert caught.value is error


@pytest.mark.parametrize("reservation_id", ["trip-1/flight", "a", "T.1:x_y-z/2", "x" * 128])
def test_valid_reservation_ids(reservation_id: str) -> None:
    check_reservation_id(reservation_id)


@pytest.mark.parametrize("reservation_id", ["", "/leading-slash", "has space", "x" * 129, "ünïcode", "a\nb", "abc\n"])
def test_invalid_reservation_ids(reservation_id: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_reservation_id(reservation_id)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in caught.value.violations] == ["reservation_id"]


def test_fingerprint_ignores_key_order_but_not_values() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    assert fingerprint({"a": [1, 2]}) != fingerprint({"a": [2, 1]})
