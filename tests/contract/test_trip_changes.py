"""Changing and cancelling a booked trip, over real gRPC on the in-process mesh (real participants and
databases): a change reserves only what differs as the trip's next revision, confirms it, settles the
difference and only then lets go of what it replaced; a change that cannot be had leaves the trip exactly
as it was; a cancellation releases everything and refunds what was paid less the fare rules' fee. The
mesh fixture audits every database after each test (I1-I8)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from coordinator.engine import RetryPolicy
from services.kit.clock import FakeClock
from tests.contract.test_trip_car import car
from tests.contract.test_trip_coordinator import booking, step_names, wait_for_mail
from tests.support.databases import Databases
from tests.support.mesh import Mesh, audited_mesh
from tests.support.status import error_reason
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = pytest.mark.contract

APPLIED, REVERTED = trip_pb.TRIP_CHANGE_OUTCOME_APPLIED, trip_pb.TRIP_CHANGE_OUTCOME_REVERTED
CONFIRMED, CANCELLED = common_pb.RESERVATION_STATUS_CONFIRMED, common_pb.RESERVATION_STATUS_CANCELLED


@pytest.fixture
async def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, databases: Databases) -> AsyncIterator[Mesh]:
    async with audited_mesh(tmp_path, monkeypatch, databases=databases) as running:
        yield running


def stay(hotel_id: str = "lis-alfama", nights: tuple[int, int] = (15, 22), room: int = 1) -> trip_pb.TripHotel:
    return trip_pb.TripHotel(
        hotel_id=hotel_id,
        room_type=room,  # type: ignore[arg-type]
        check_in=common_pb.Date(year=2027, month=3, day=nights[0]),
        check_out=common_pb.Date(year=2027, month=3, day=nights[1]),
        room_count=1,
    )


async def booked(mesh: Mesh, **parts: object) -> trip_pb.Trip:
    trip = (await mesh.stub.BookTrip(booking(**parts), timeout=30)).trip
    assert trip.state == common_pb.TRIP_STATE_CONFIRMED, trip.failure_reason
    return trip


def reservations(trip: trip_pb.Trip) -> dict[str, tuple[int, int]]:
    """reservation id -> (status, price)."""
    return {r.reservation_id: (r.status, r.price.minor_units) for r in trip.reservations}


async def statuses(mesh: Mesh, participant: str) -> dict[str, str]:
    async with mesh.participants[participant].engine.connect() as conn:
        rows = await conn.execute(text("SELECT reservation_id, status FROM reservations"))
        return {r.reservation_id: r.status for r in rows}


@pytest.mark.postgresql
async def test_a_longer_stay_is_reserved_anew_the_difference_charged_and_the_old_stay_released(mesh: Mesh) -> None:
    trip = await booked(mesh)
    tid, before = trip.trip_id, trip.total.minor_units
    request = trip_pb.ChangeTripRequest(trip_id=tid, change_id="longer", hotel=stay(nights=(15, 24)))
    answer = await mesh.stub.ChangeTrip(request, timeout=30)
    changed, change = answer.trip, answer.change
    assert changed.state == common_pb.TRIP_STATE_CONFIRMED and change.outcome == APPLIED, change.reason
    assert change.revision == 2 and list(change.parts) == ["hotel"] and list(change.dropped) == ["hotel"]
    held = reservations(changed)
    new_hotel, old_hotel = held[f"{tid}/hotel.2"], held[f"{tid}/hotel"]
    assert new_hotel[0] == CONFIRMED and old_hotel[0] == CANCELLED
    assert new_hotel[1] > old_hotel[1]  # two more nights
    difference = new_hotel[1] - old_hotel[1]
    assert change.price_difference.minor_units == difference
    assert held[f"{tid}/payment.2"] == (CONFIRMED, difference)  # only the difference is charged
    assert held[f"{tid}/payment"][0] == CONFIRMED and held[f"{tid}/flight"][0] == CONFIRMED  # untouched
    assert changed.total.minor_units == changed.paid.minor_units == before + difference
    assert changed.booked.hotel == request.hotel and changed.request.hotel == booking().hotel
    names = step_names(changed)[len(trip.steps) :]
    # new parts first, then the payment and the message, confirmed (payment last of the parts), and only
    # then the replaced stay cancelled
    assert names[0] == "hotel.reserve@2" and set(names[1:3]) == {"payment.reserve@2", "notify.reserve@2"}
    assert names[3:5] == ["hotel.confirm@2", "payment.confirm@2"]
    assert names[-1] == "hotel.cancel" and "notify.confirm@2" in names
    assert (await statuses(mesh, "hotel"))[f"{tid}/hotel"] == "CANCELLED"
    body = (await wait_for_mail(mesh.mail_dir, f"{tid} is changed")).get_payload(decode=True)
    assert isinstance(body, bytes) and b"2027-03-15 to 2027-03-24" in body and b"difference charged" in body


async def test_a_change_that_cannot_be_had_leaves_the_trip_exactly_as_it_was(mesh: Mesh) -> None:
    trip = await booked(mesh)
    request = trip_pb.ChangeTripRequest(
        trip_id=trip.trip_id, change_id="vienna-luxury", car=car("Vienna", car_pb.CAR_CLASS_LUXURY)
    )
    answer = await mesh.stub.ChangeTrip(request, timeout=30)
    changed, change = answer.trip, answer.change
    assert changed.state == common_pb.TRIP_STATE_CONFIRMED and change.outcome == REVERTED
    assert "car.reserve@2 was refused" in change.reason and "SOLD_OUT" in change.reason
    assert changed.failure_reason == ""
    assert changed.booked == trip.request and changed.total == trip.total and changed.paid == trip.total
    assert reservations(changed) == reservations(trip)  # the refused car held nothing; nothing else moved
    assert not any(n.startswith(("payment.", "flight.", "hotel.")) for n in step_names(changed)[len(trip.steps) :])


async def test_a_change_is_idempotent_on_its_change_id_and_refuses_another_change_under_it(mesh: Mesh) -> None:
    trip = await booked(mesh)
    request = trip_pb.ChangeTripRequest(trip_id=trip.trip_id, change_id="c1", hotel=stay(nights=(15, 23)))
    first = await mesh.stub.ChangeTrip(request, timeout=30)
    again = await mesh.stub.ChangeTrip(request, timeout=30)
    assert again.change == first.change and again.trip.steps == first.trip.steps
    other = trip_pb.ChangeTripRequest(trip_id=trip.trip_id, change_id="c1", hotel=stay(nights=(16, 23)))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mesh.stub.ChangeTrip(other, timeout=30)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(refused.value) == "CHANGE_CONFLICT"
    assert len((await mesh.stub.GetTrip(trip_pb.GetTripRequest(trip_id=trip.trip_id))).trip.changes) == 1


async def test_other_seats_are_a_new_flight_reservation_and_the_old_seats_are_free_again(mesh: Mesh) -> None:
    flight = booking().flight
    flight.seats[:] = ["30A", "30B"]
    trip = await booked(mesh, flight=flight)
    moved = trip_pb.TripFlight()
    moved.CopyFrom(flight)
    moved.seats[:] = ["31C", "31D"]
    answer = await mesh.stub.ChangeTrip(
        trip_pb.ChangeTripRequest(trip_id=trip.trip_id, change_id="seats", flight=moved), timeout=30
    )
    assert answer.change.outcome == APPLIED, answer.change.reason
    flight_reservation = next(r for r in answer.trip.reservations if r.reservation_id.endswith("/flight.2"))
    assert {tuple(s.seats) for s in flight_reservation.seats} == {("31C", "31D")}
    assert answer.change.price_difference.minor_units == 0
    assert not any(n.startswith("payment.") and n.endswith("@2") for n in step_names(answer.trip))
    # the seats given up can be had by another party
    other = await booked(mesh, flight=flight)
    taken = next(r for r in other.reservations if r.participant == "flight")
    assert {tuple(s.seats) for s in taken.seats} == {("30A", "30B")}


async def test_adding_a_car_charges_just_the_car(mesh: Mesh) -> None:
    trip = await booked(mesh)
    answer = await mesh.stub.ChangeTrip(
        trip_pb.ChangeTripRequest(trip_id=trip.trip_id, change_id="car", car=car()), timeout=30
    )
    assert answer.change.outcome == APPLIED, answer.change.reason
    assert list(answer.change.parts) == ["car"] and list(answer.change.dropped) == []
    held = reservations(answer.trip)
    car_price = held[f"{trip.trip_id}/car.2"][1]
    assert held[f"{trip.trip_id}/car.2"][0] == CONFIRMED
    assert answer.change.price_difference.minor_units == car_price == held[f"{trip.trip_id}/payment.2"][1]
    assert answer.trip.paid.minor_units == trip.total.minor_units + car_price == answer.trip.total.minor_units


@pytest.mark.postgresql
async def test_a_cheaper_change_refunds_the_difference(mesh: Mesh) -> None:
    trip = await booked(mesh)
    tid = trip.trip_id
    answer = await mesh.stub.ChangeTrip(
        trip_pb.ChangeTripRequest(trip_id=tid, change_id="no-hotel", drop_hotel=True), timeout=30
    )
    assert answer.change.outcome == APPLIED, answer.change.reason
    hotel_price = reservations(trip)[f"{tid}/hotel"][1]
    assert answer.change.price_difference.minor_units == -hotel_price
    assert list(answer.change.parts) == [] and list(answer.change.dropped) == ["hotel"]
    held = reservations(answer.trip)
    assert held[f"{tid}/hotel"][0] == CANCELLED and held[f"{tid}/payment.2"] == (CONFIRMED, hotel_price)
    assert answer.trip.paid.minor_units == answer.trip.total.minor_units == trip.total.minor_units - hotel_price
    assert not answer.trip.booked.HasField("hotel")


@pytest.mark.postgresql
async def test_a_cancelled_trip_releases_everything_and_is_refunded_in_full_far_from_departure(mesh: Mesh) -> None:
    trip = await booked(mesh, car=car())
    tid = trip.trip_id
    cancelled = (await mesh.stub.CancelTrip(trip_pb.CancelTripRequest(trip_id=tid), timeout=30)).trip
    assert cancelled.state == common_pb.TRIP_STATE_CANCELLED
    assert cancelled.failure_reason == "cancelled by the customer"
    (change,) = cancelled.changes
    assert change.kind == trip_pb.TRIP_CHANGE_KIND_CANCEL and change.outcome == trip_pb.TRIP_CHANGE_OUTCOME_CANCELLED
    assert change.fee.minor_units == 0 and change.price_difference.minor_units == -trip.total.minor_units
    assert cancelled.paid.minor_units == 0
    held = reservations(cancelled)
    for part in ("flight", "hotel", "car"):
        assert held[f"{tid}/{part}"][0] == CANCELLED
    assert held[f"{tid}/payment.2"] == (CONFIRMED, trip.total.minor_units)  # the refund, paid out
    for participant in ("flight", "hotel", "car"):
        assert (await statuses(mesh, participant))[f"{tid}/{participant}"] == "CANCELLED"
    await wait_for_mail(mesh.mail_dir, f"{tid} is cancelled")
    again = (await mesh.stub.CancelTrip(trip_pb.CancelTripRequest(trip_id=tid), timeout=30)).trip
    assert again.steps == cancelled.steps and again.state == common_pb.TRIP_STATE_CANCELLED


async def test_cancelling_close_to_departure_keeps_the_economy_fare_fee(mesh: Mesh) -> None:
    trip = await booked(mesh)
    mesh.coordinator.service.clock = FakeClock(datetime(2027, 3, 5, 9, 0, tzinfo=UTC))  # 10 days before
    cancelled = (await mesh.stub.CancelTrip(trip_pb.CancelTripRequest(trip_id=trip.trip_id), timeout=30)).trip
    flight_price = reservations(trip)[f"{trip.trip_id}/flight"][1]
    fee = flight_price * 20 // 100
    (change,) = cancelled.changes
    assert change.fee.minor_units == fee and cancelled.paid.minor_units == fee
    assert change.price_difference.minor_units == -(trip.total.minor_units - fee)
    assert "fee" in cancelled.failure_reason
    body = (await wait_for_mail(mesh.mail_dir, f"{trip.trip_id} is cancelled")).get_payload(decode=True)
    assert isinstance(body, bytes) and b"Cancellation fee kept" in body


async def test_a_changed_trip_can_be_cancelled_and_every_revision_is_released(mesh: Mesh) -> None:
    trip = await booked(mesh)
    tid = trip.trip_id
    await mesh.stub.ChangeTrip(trip_pb.ChangeTripRequest(trip_id=tid, change_id="car", car=car()), timeout=30)
    await mesh.stub.ChangeTrip(
        trip_pb.ChangeTripRequest(trip_id=tid, change_id="stay", hotel=stay("lis-chiado")), timeout=30
    )
    cancelled = (await mesh.stub.CancelTrip(trip_pb.CancelTripRequest(trip_id=tid), timeout=30)).trip
    assert cancelled.state == common_pb.TRIP_STATE_CANCELLED and cancelled.paid.minor_units == 0
    live = [
        r.reservation_id
        for r in cancelled.reservations
        if r.status == CONFIRMED and r.participant in ("flight", "hotel", "car")
    ]
    assert live == []
    assert [c.outcome for c in cancelled.changes] == [APPLIED, APPLIED, trip_pb.TRIP_CHANGE_OUTCOME_CANCELLED]


async def test_bad_changes_and_cancellations_are_refused_and_change_nothing(mesh: Mesh) -> None:
    trip = await booked(mesh)
    tid = trip.trip_id
    cases = [
        (trip_pb.ChangeTripRequest(trip_id=tid, hotel=stay()), grpc.StatusCode.INVALID_ARGUMENT, "change_id"),
        (trip_pb.ChangeTripRequest(trip_id=tid, change_id="x"), grpc.StatusCode.INVALID_ARGUMENT, "needs a new"),
        (
            trip_pb.ChangeTripRequest(trip_id=tid, change_id="x", hotel=stay(), drop_hotel=True),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cannot drop the hotel",
        ),
        (
            trip_pb.ChangeTripRequest(trip_id=tid, change_id="x", hotel=stay()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "nothing",
        ),
        (
            trip_pb.ChangeTripRequest(trip_id=tid, change_id="x", hotel=stay(nights=(22, 15))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "must be after check-in",
        ),
        (trip_pb.ChangeTripRequest(trip_id="nope", change_id="x", drop_car=True), grpc.StatusCode.NOT_FOUND, "nope"),
    ]
    for request, code, words in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await mesh.stub.ChangeTrip(request, timeout=10)
        assert refused.value.code() == code and words in (refused.value.details() or ""), request
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await mesh.stub.CancelTrip(trip_pb.CancelTripRequest(trip_id="nope"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await mesh.stub.GetTrip(trip_pb.GetTripRequest(trip_id=tid))).trip == trip
    # a trip that was never booked cannot be changed; its cancellation is answered as it is
    declined = (await mesh.stub.BookTrip(booking(payment_method_id="pm_ada_declined"), timeout=30)).trip
    assert declined.state == common_pb.TRIP_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as not_changeable:
        await mesh.stub.ChangeTrip(
            trip_pb.ChangeTripRequest(trip_id=declined.trip_id, change_id="x", drop_hotel=True), timeout=10
        )
    assert not_changeable.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(not_changeable.value) == "TRIP_NOT_CHANGEABLE"
    again = (await mesh.stub.CancelTrip(trip_pb.CancelTripRequest(trip_id=declined.trip_id), timeout=10)).trip
    assert again.steps == declined.steps and not again.changes


async def test_a_cancellation_outlasts_a_payment_outage_longer_than_a_reserve_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancellation only goes forward: once its parts are let go, its refund is as patient as a confirm.
    Giving up after the reserve budget (2 attempts here) would park a trip that needs nothing but time."""
    policy = RetryPolicy(
        reserve_attempts=2, confirm_attempts=200, cancel_attempts=5, initial_backoff=0.02, max_backoff=0.05
    )
    async with audited_mesh(tmp_path, monkeypatch, policy=policy) as running:
        trip = await booked(running)
        # payment refuses the refund's Reserve as unavailable for its first 1.5 s after this restart
        rule = [{"method": "Reserve", "match": f"{trip.trip_id}/payment.2", "outage": [0, 1.5]}]
        monkeypatch.setenv("TRIPMESH_PAYMENT_FAULTS", json.dumps(rule))
        await running.restart_participant("payment")
        request = trip_pb.CancelTripRequest(trip_id=trip.trip_id)
        cancelled = (await running.stub.CancelTrip(request, timeout=30)).trip
        assert cancelled.state == common_pb.TRIP_STATE_CANCELLED, cancelled.failure_reason
        refund = next(s for s in cancelled.steps if s.name == "payment.reserve@2")
        assert refund.attempts > policy.reserve_attempts and refund.error_code == "UNAVAILABLE"
        assert cancelled.paid.minor_units == 0
