"""The hotel domain without I/O: request validation, the catalogue window, pricing."""

from __future__ import annotations

from datetime import date

import pytest

from services.hotel import catalogue
from services.hotel.domain import (
    LAST_CHECK_OUT,
    HotelBooking,
    RoomType,
    new_booking,
    new_query,
    price,
    unknown_city,
)
from services.kit.errors import InvalidRequestError
from services.kit.money import Money

pytestmark = pytest.mark.unit

IN = date(2027, 3, 15)
OUT = date(2027, 3, 18)


def fields(error: pytest.ExceptionInfo[InvalidRequestError]) -> set[str]:
    return {v.field for v in error.value.violations}


def test_a_booking_is_normalised_and_round_trips_through_json() -> None:
    booking = new_booking(" LIS-Alfama ", RoomType.DELUXE, IN, OUT, 0)
    assert booking == HotelBooking("lis-alfama", RoomType.DELUXE, IN, OUT, 1)
    assert booking.nights == 3
    assert HotelBooking.from_json(booking.to_json()) == booking


@pytest.mark.parametrize(
    ("check_in", "check_out", "field", "text"),
    [
        (IN, date(2027, 3, 10), "check_out", "must be after check_in (2027-03-15), got 2027-03-10"),
        (IN, IN, "check_out", "must be after check_in"),
        (date(2027, 3, 1), date(2027, 4, 1), "check_out", "at most 30 nights, got 31"),
        (date(2027, 2, 27), date(2027, 3, 2), "check_in", "must be between 2027-03-01 and 2027-04-29"),
        (date(2027, 4, 30), date(2027, 5, 1), "check_in", "must be between 2027-03-01 and 2027-04-29"),
        (date(2027, 4, 28), date(2027, 5, 1), "check_out", "must be on or before 2027-04-30"),
        (None, OUT, "check_in", "real calendar date"),
        (IN, None, "check_out", "real calendar date"),
    ],
)
def test_impossible_stays_name_the_field(check_in: date | None, check_out: date | None, field: str, text: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        new_booking("lis-alfama", RoomType.STANDARD, check_in, check_out, 1)
    assert fields(error) == {field}
    assert text in error.value.message


def test_the_last_night_on_sale_can_be_booked() -> None:
    booking = new_booking("lis-alfama", RoomType.STANDARD, date(2027, 4, 29), LAST_CHECK_OUT, 1)
    assert booking.nights == 1


@pytest.mark.parametrize("rooms", [-1, 6, 100])
def test_room_count_outside_one_to_five_is_refused(rooms: int) -> None:
    with pytest.raises(InvalidRequestError) as error:
        new_booking("lis-alfama", RoomType.STANDARD, IN, OUT, rooms)
    assert fields(error) == {"room_count"}


def test_every_problem_of_a_request_is_reported_at_once() -> None:
    with pytest.raises(InvalidRequestError) as error:
        new_booking("", None, IN, IN, 9)
    assert fields(error) == {"hotel_id", "room_type", "check_out", "room_count"}


def test_search_accepts_any_dates_but_checks_their_order() -> None:
    query = new_query("  Lisbon ", date(2027, 6, 1), date(2027, 6, 3), 0)
    assert (query.city, query.nights, query.room_count) == ("Lisbon", 2, 1)
    with pytest.raises(InvalidRequestError) as error:
        new_query("Lisbon", OUT, IN, 1)
    assert fields(error) == {"check_out"}
    with pytest.raises(InvalidRequestError) as error:
        new_query("", IN, OUT, 1)
    assert fields(error) == {"city"}


def test_unknown_city_lists_the_cities_with_hotels() -> None:
    error = unknown_city("Oslo", ["Lisbon", "Amsterdam"])
    assert error.violations[0].field == "city"
    assert "Amsterdam, Lisbon" in error.message


def test_price_is_the_nightly_rates_times_the_rooms() -> None:
    assert price([12900, 12900, 15900], 2) == Money(83400, "EUR")


def test_the_catalogue_covers_every_night_of_the_window() -> None:
    nights = list(catalogue.catalogue_nights())
    assert (nights[0], nights[-1], len(nights)) == (date(2027, 3, 1), date(2027, 4, 29), 60)
    lisbon = [h.hotel_id for h in catalogue.HOTELS if h.city == "Lisbon"]
    assert "lis-alfama" in lisbon and len(lisbon) == 2
    assert len(catalogue.HOTELS) == 8
    assert catalogue.ROOMS[RoomType.SUITE] == 2
