"""The flight domain without I/O: request validation, the return-flight rule, pricing, the catalogue."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.flight import catalogue
from services.flight.domain import (
    CATALOGUE_END,
    Cabin,
    FlightBooking,
    Leg,
    check_return,
    new_booking,
    new_query,
    price,
    unknown_airports,
)
from services.kit.errors import InvalidRequestError
from services.kit.money import Money

pytestmark = pytest.mark.unit


def fields(error: pytest.ExceptionInfo[InvalidRequestError]) -> set[str]:
    return {v.field for v in error.value.violations}


def leg(flight_id: str, origin: str, destination: str, departs: str, arrives: str) -> Leg:
    return Leg(
        flight_id,
        origin,
        destination,
        datetime.fromisoformat(departs).replace(tzinfo=UTC),
        datetime.fromisoformat(arrives).replace(tzinfo=UTC),
    )


def test_a_round_trip_booking_is_normalised_and_round_trips_through_json() -> None:
    booking = new_booking(" tm101-20270315 ", "TM102-20270322", Cabin.ECONOMY, 2)
    assert booking == FlightBooking("TM101-20270315", "TM102-20270322", Cabin.ECONOMY, 2)
    assert booking.flight_ids == ("TM101-20270315", "TM102-20270322")
    assert FlightBooking.from_json(booking.to_json()) == booking


def test_an_empty_return_id_means_one_way() -> None:
    booking = new_booking("TM101-20270315", "", Cabin.BUSINESS, 1)
    assert booking.return_flight_id is None
    assert booking.flight_ids == ("TM101-20270315",)
    assert booking.to_json()["return_flight_id"] is None


@pytest.mark.parametrize("count", [0, -1, 10, 1000])
def test_passenger_count_outside_one_to_nine_is_refused(count: int) -> None:
    with pytest.raises(InvalidRequestError) as error:
        new_booking("TM101-20270315", "", Cabin.ECONOMY, count)
    assert fields(error) == {"passenger_count"}
    assert f"must be between 1 and 9, got {count}" in error.value.message


def test_every_problem_of_a_request_is_reported_at_once() -> None:
    with pytest.raises(InvalidRequestError) as error:
        new_booking("", "", None, 0)
    assert fields(error) == {"outbound_flight_id", "cabin", "passenger_count"}


def test_the_return_flight_must_differ_from_the_outbound() -> None:
    with pytest.raises(InvalidRequestError) as error:
        new_booking("TM101-20270315", "tm101-20270315", Cabin.ECONOMY, 1)
    assert fields(error) == {"return_flight_id"}


def test_a_return_flight_leaving_before_the_outbound_lands_is_refused() -> None:
    outbound = leg("TM101-20270315", "LHR", "LIS", "2027-03-15T08:05", "2027-03-15T10:45")
    early = leg("TM102-20270315", "LIS", "LHR", "2027-03-15T10:30", "2027-03-15T13:10")
    with pytest.raises(InvalidRequestError) as error:
        check_return(outbound, early)
    assert fields(error) == {"return_flight_id"}
    assert "departs before the outbound flight TM101-20270315 arrives" in error.value.message
    later = leg("TM102-20270322", "LIS", "LHR", "2027-03-22T12:40", "2027-03-22T15:20")
    check_return(outbound, later)


def test_a_return_flight_must_fly_the_route_backwards() -> None:
    outbound = leg("TM101-20270315", "LHR", "LIS", "2027-03-15T08:05", "2027-03-15T10:45")
    elsewhere = leg("TM112-20270322", "CDG", "LHR", "2027-03-22T09:35", "2027-03-22T09:41")
    with pytest.raises(InvalidRequestError) as error:
        check_return(outbound, elsewhere)
    assert fields(error) == {"return_flight_id"}


def test_price_is_the_fares_times_the_passengers() -> None:
    assert price([13800, 13800], 3) == Money(82800, "EUR")
    assert price([48400], 1) == Money(48400, "EUR")


def test_search_defaults_to_one_passenger_and_normalises_codes() -> None:
    query = new_query(" lhr", "LIS ", date(2027, 3, 15), 0)
    assert (query.origin, query.destination, query.passenger_count) == ("LHR", "LIS", 1)


@pytest.mark.parametrize(
    ("origin", "destination", "day", "count", "field"),
    [
        ("LHR", "LHR", date(2027, 3, 15), 1, "destination"),
        ("", "LIS", date(2027, 3, 15), 1, "origin"),
        ("LONDON", "LIS", date(2027, 3, 15), 1, "origin"),
        ("LHR", "LIS", None, 1, "departure_date"),
        ("LHR", "LIS", date(2027, 3, 15), 10, "passenger_count"),
    ],
)
def test_search_validation_names_the_field(
    origin: str, destination: str, day: date | None, count: int, field: str
) -> None:
    with pytest.raises(InvalidRequestError) as error:
        new_query(origin, destination, day, count)
    assert fields(error) == {field}


def test_unknown_airports_are_named() -> None:
    query = new_query("LHR", "XYZ", date(2027, 3, 15), 1)
    unknown_airports(new_query("LHR", "LIS", date(2027, 3, 15), 1), ["LHR", "LIS"])
    with pytest.raises(InvalidRequestError) as error:
        unknown_airports(query, ["LHR", "LIS"])
    assert fields(error) == {"destination"}
    assert "unknown airport 'XYZ'" in error.value.message


def test_the_catalogue_fares_grow_with_distance_and_cabin() -> None:
    assert catalogue.fare_minor(1565, Cabin.ECONOMY) == 13800
    assert catalogue.fare_minor(1565, Cabin.PREMIUM_ECONOMY) == 24900
    assert catalogue.fare_minor(1565, Cabin.BUSINESS) == 48400
    assert catalogue.fare_minor(345, Cabin.ECONOMY) < catalogue.fare_minor(1565, Cabin.ECONOMY)


def test_local_times_become_utc_under_eu_summer_time() -> None:
    assert catalogue.to_utc(date(2027, 3, 15), "08:05", 0) == datetime(2027, 3, 15, 8, 5, tzinfo=UTC)
    assert catalogue.to_utc(date(2027, 3, 15), "08:05", 1) == datetime(2027, 3, 15, 7, 5, tzinfo=UTC)
    # Summer time starts on the last Sunday of March 2027, the 28th.
    assert catalogue.to_utc(date(2027, 3, 28), "08:05", 1) == datetime(2027, 3, 28, 6, 5, tzinfo=UTC)
    assert catalogue.to_utc(date(2027, 4, 10), "08:05", 0) == datetime(2027, 4, 10, 7, 5, tzinfo=UTC)


def test_the_catalogue_window_is_sixty_days() -> None:
    days = list(catalogue.catalogue_days())
    assert (days[0], days[-1], len(days)) == (date(2027, 3, 1), date(2027, 4, 29), 60)
    assert days[-1] == CATALOGUE_END


def test_readme_flights_and_the_regional_route_are_in_the_schedule() -> None:
    flights = {f["flight_id"]: (f, cabins) for f, cabins in catalogue._flight_rows(date(2027, 3, 15))}
    outbound, _ = flights["TM101-20270315"]
    back, _ = flights["TM102-20270315"]
    assert (outbound["origin"], outbound["destination"], outbound["departure_time"]) == ("LHR", "LIS", "08:05")
    assert (back["origin"], back["destination"]) == ("LIS", "LHR")
    regional, cabins = flights["TM401-20270315"]
    assert (regional["origin"], regional["destination"]) == ("ZRH", "VIE")
    assert {c["cabin"]: c["capacity"] for c in cabins}["BUSINESS"] == 8
    assert len({f["flight_number"] for f, _ in flights.values()}) == len(flights)
