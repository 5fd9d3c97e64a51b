"""A trip request as the step log stores it: its JSON and its fingerprint never change for a given request.

The fingerprint is the idempotency check of BookTrip against trips written by earlier versions, so it is
pinned here by value (computed with the `dataclasses.asdict` form the step log first stored).
"""

from __future__ import annotations

import pytest

from coordinator.trip import CarPart, FlightPart, HotelPart, TripRequest

ROUND_TRIP_WITH_HOTEL = TripRequest(
    "trip-1",
    "cust-ada",
    "ada@example.com",
    "Ada",
    FlightPart("TM101-20270315", "TM102-20270318", 1, 2),
    HotelPart("lis-alfama", 2, "2027-03-15", "2027-03-18", 1),
    "pm_ada_visa",
    "EUR",
)
SEATS_AND_CAR = TripRequest(
    "trip-2",
    "cust-ada",
    "ada@example.com",
    "Ada",
    FlightPart("TM101-20270315", "", 2, 2, ("3A", "3C")),
    None,
    "pm_ada_visa",
    "EUR",
    CarPart("Lisbon", 1, "2027-03-15", "2027-03-18"),
)


@pytest.mark.parametrize(
    ("request_", "fingerprint"),
    [
        (ROUND_TRIP_WITH_HOTEL, "65eb6a68ee217f2780834015643e2b222d5c0efeb7a21fa0731018cc8636e270"),
        (SEATS_AND_CAR, "b2e29246c2385db0633473caa04bdca1b5c653f9788d944799ac9ec5e60f7b68"),
    ],
)
def test_the_fingerprint_of_a_request_is_stable(request_: TripRequest, fingerprint: str) -> None:
    assert request_.fingerprint() == fingerprint


def test_the_stored_form_reads_back_and_leaves_out_what_older_trips_lacked() -> None:
    stored = ROUND_TRIP_WITH_HOTEL.to_json()
    assert "car" not in stored and "seats" not in stored["flight"]  # as trips were stored before cars and seats
    assert TripRequest.from_json(stored) == ROUND_TRIP_WITH_HOTEL
    with_car = SEATS_AND_CAR.to_json()
    assert with_car["hotel"] is None and with_car["flight"]["seats"] == ["3A", "3C"]
    assert with_car["car"] == {"city": "Lisbon", "car_class": 1, "pick_up": "2027-03-15", "drop_off": "2027-03-18"}
    assert TripRequest.from_json(with_car) == SEATS_AND_CAR
