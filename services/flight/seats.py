"""Seat maps and seat choice, pure: which seats a cabin has, and which free seats to give a party.

A cabin's seat map follows from its capacity: rows from the cabin's first row, each with the cabin's
letters, the last row possibly short. A mainline aircraft (150/24/12) has business rows 1-3 (A C D F),
premium economy rows 5-8 (A-F) and economy rows 10-34 (A-F); the regional jet (60/12/8) business rows
1-2, premium economy 5-6 and economy 10-19.

A party without named seats is seated side by side: the first row with a run of adjacent free seats
long enough; else the first row with enough free seats; else the fewest consecutive rows that hold the
party, front first. No I/O: the inventory reads the taken seats and writes the chosen ones.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from services.flight.domain import Cabin
from services.kit.errors import FieldViolation, InvalidRequestError

FIRST_ROW = {Cabin.BUSINESS: 1, Cabin.PREMIUM_ECONOMY: 5, Cabin.ECONOMY: 10}
LETTERS = {Cabin.BUSINESS: "ACDF", Cabin.PREMIUM_ECONOMY: "ABCDEF", Cabin.ECONOMY: "ABCDEF"}
SEAT = re.compile(r"^([1-9][0-9]?)([A-K])$")


@dataclass(frozen=True, slots=True, order=True)
class Seat:
    row: int
    letter: str

    def __str__(self) -> str:
        return f"{self.row}{self.letter}"


@functools.cache
def seat_map(cabin: Cabin, capacity: int) -> tuple[Seat, ...]:
    """Every seat of a cabin of this capacity, front to back, left to right (built once per layout:
    building it on every Reserve was a tenth of the flight service's CPU)."""
    letters = LETTERS[cabin]
    return tuple(Seat(FIRST_ROW[cabin] + i // len(letters), letters[i % len(letters)]) for i in range(capacity))


@functools.cache
def _labelled(cabin: Cabin, capacity: int) -> tuple[tuple[Seat, str], ...]:
    return tuple((seat, str(seat)) for seat in seat_map(cabin, capacity))


def parse_seat(label: str) -> Seat | None:
    match = SEAT.match(label.strip().upper())
    return None if match is None else Seat(int(match[1]), match[2])


def requested_seats(labels: Sequence[str], passenger_count: int) -> tuple[str, ...]:
    """Validate named seats (none: the service assigns them); raise InvalidRequestError."""
    if not labels:
        return ()
    seats = [parse_seat(label) for label in labels]
    bad = [label for label, seat in zip(labels, seats, strict=True) if seat is None]
    problems: list[FieldViolation] = []
    if bad:
        problems.append(FieldViolation("seats", f"{', '.join(map(repr, bad))}: a seat is a row and a letter, like 12A"))
    names = [str(s) for s in seats if s is not None]
    if len(set(names)) != len(names):
        problems.append(FieldViolation("seats", "names a seat twice"))
    if len(labels) != passenger_count:
        problems.append(FieldViolation("seats", f"one seat per passenger: {passenger_count} wanted, got {len(labels)}"))
    if problems:
        raise InvalidRequestError(problems)
    return tuple(str(s) for s in sorted(s for s in seats if s is not None))


def not_in_cabin(flight_id: str, cabin: Cabin, capacity: int, labels: Collection[str]) -> InvalidRequestError | None:
    """INVALID_ARGUMENT for named seats this cabin does not have, or None."""
    layout = seat_map(cabin, capacity)
    known = {label for _seat, label in _labelled(cabin, capacity)}
    missing = [label for label in labels if label not in known]
    if not missing:
        return None
    first, last = layout[0], layout[-1]
    return InvalidRequestError.of(
        "seats",
        f"{', '.join(missing)}: not a {cabin.value} seat on {flight_id} (rows {first.row}-{last.row}, "
        f"letters {LETTERS[cabin]})",
    )


def assign(cabin: Cabin, capacity: int, taken: Collection[str], count: int) -> list[str] | None:
    """`count` free seats side by side as far as they go, or None when fewer are free."""
    rows: dict[int, list[Seat]] = {}
    for seat, label in _labelled(cabin, capacity):
        if label not in taken:
            rows.setdefault(seat.row, []).append(seat)
    letters = LETTERS[cabin]
    for free in rows.values():  # a run of adjacent seats in one row
        for start in range(len(free) - count + 1):
            run = free[start : start + count]
            if letters.index(run[-1].letter) - letters.index(run[0].letter) == count - 1:
                return [str(s) for s in run]
    for free in rows.values():  # one row, not side by side
        if len(free) >= count:
            return [str(s) for s in free[:count]]
    best: list[Seat] | None = None  # the fewest consecutive rows, front first
    numbers = sorted(rows)
    for i in range(len(numbers)):
        picked: list[Seat] = []
        for number in numbers[i:]:
            if picked and number != picked[-1].row + 1:
                break
            picked += rows[number][: count - len(picked)]
            if len(picked) == count:
                if best is None or picked[-1].row - picked[0].row < best[-1].row - best[0].row:
                    best = picked
                break
    if best is None:  # no consecutive rows hold the party: any free seats, front first
        spread = [s for number in numbers for s in rows[number]][:count]
        best = spread if len(spread) == count else None
    return None if best is None else [str(s) for s in best]
