"""Seat maps and seat choice (services/flight/seats.py), pure."""

from __future__ import annotations

import pytest

from services.flight.domain import Cabin
from services.flight.seats import assign, not_in_cabin, requested_seats, seat_map
from services.kit.errors import InvalidRequestError

pytestmark = pytest.mark.unit


def labels(cabin: Cabin, capacity: int) -> list[str]:
    return [str(s) for s in seat_map(cabin, capacity)]


def test_seat_maps_follow_from_capacity() -> None:
    business = labels(Cabin.BUSINESS, 12)
    assert business[:4] == ["1A", "1C", "1D", "1F"] and business[-1] == "3F"
    economy = labels(Cabin.ECONOMY, 150)
    assert (economy[0], economy[-1], len(set(economy))) == ("10A", "34F", 150)
    assert labels(Cabin.PREMIUM_ECONOMY, 24)[-1] == "8F"
    assert labels(Cabin.BUSINESS, 8)[-1] == "2F"  # the regional jet


def test_a_party_sits_side_by_side_in_the_first_row_that_has_room() -> None:
    assert assign(Cabin.ECONOMY, 150, set(), 3) == ["10A", "10B", "10C"]
    # 10C is taken: 10D-10F is the first run of three
    assert assign(Cabin.ECONOMY, 150, {"10C"}, 3) == ["10D", "10E", "10F"]
    # row 10 has no run of four (C taken), row 11 has
    assert assign(Cabin.ECONOMY, 150, {"10C"}, 4) == ["11A", "11B", "11C", "11D"]


def test_without_a_run_one_row_then_neighbouring_rows() -> None:
    taken = {f"{row}{letter}" for row in range(10, 35) for letter in "BE"}  # every row: A C D F free
    assert assign(Cabin.ECONOMY, 150, taken, 4) == ["10A", "10C", "10D", "10F"]
    full = {str(s) for s in seat_map(Cabin.BUSINESS, 12)} - {"1F", "2A", "2C", "3A"}
    assert assign(Cabin.BUSINESS, 12, full, 3) == ["1F", "2A", "2C"]  # rows 1-2, not 2-3 with a gap
    assert assign(Cabin.BUSINESS, 12, full, 5) is None


@pytest.mark.parametrize(
    ("seats", "count", "message"),
    [
        (["12A", "x"], 2, "like 12A"),
        (["12A", "12a"], 2, "twice"),
        (["12A"], 2, "one seat per passenger"),
    ],
)
def test_named_seats_are_validated(seats: list[str], count: int, message: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        requested_seats(seats, count)
    assert message in str(error.value) and error.value.violations[0].field == "seats"


def test_named_seats_are_normalised_and_checked_against_the_cabin() -> None:
    assert requested_seats([" 12b", "12A"], 2) == ("12A", "12B")
    assert not_in_cabin("TM101-20270315", Cabin.ECONOMY, 150, ["12A", "34F"]) is None
    error = not_in_cabin("TM101-20270315", Cabin.BUSINESS, 12, ["2B", "12A"])
    assert error is not None and "2B, 12A: not a BUSINESS seat" in str(error) and "letters ACDF" in str(error)
