"""The trip saga as data (ARCHITECTURE.md, the saga): which participants, in which groups, in what order.

Each participant's place is one `Part` declaration. Reserve groups run one after another, the
participants of a group in parallel; compensation cancels the groups in reverse. Confirm groups
likewise, payment captured last so the customer is charged only when everything else is confirmed.
An optional part is skipped, in every phase, when the trip has no such part (`TripRequest.has_part`).
Auxiliary participants (the notification) never cause a compensation: their failure is recorded and
the trip goes on. The planner and the engine read only these declarations.

Every definition has a version, recorded with each trip it starts (`trips.definition_version`): a
coordinator drives a trip only with the definition it started under (`SAGAS`), and leaves alone a
trip whose version it does not know (coordinator/lease.py, coordinator/service.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Protocol


class HasParts(Protocol):
    def has_part(self, participant: str) -> bool: ...


@dataclass(frozen=True)
class Part:
    """One participant's place in the saga."""

    name: str
    reserve_group: int  # reserve groups run in ascending order; a group's parts in parallel
    confirm_group: int  # likewise for the confirms, after the commit decision
    priced: bool = False  # its reserve's price is summed into the amount the payment authorises
    optional: bool = False  # skipped when the trip has no such part
    auxiliary: bool = False  # its failure never causes a compensation


def _groups(parts: tuple[Part, ...], key: str) -> tuple[tuple[str, ...], ...]:
    numbers = sorted({getattr(p, key) for p in parts})
    return tuple(tuple(p.name for p in parts if getattr(p, key) == n) for n in numbers)


@dataclass(frozen=True)
class SagaDefinition:
    name: str
    version: int
    parts: tuple[Part, ...]

    @property
    def label(self) -> str:
        """'trip/2': how logs, errors and GetTrip name the definition."""
        return f"{self.name}/{self.version}"

    @cached_property
    def reserve_groups(self) -> tuple[tuple[str, ...], ...]:
        return _groups(self.parts, "reserve_group")

    @cached_property
    def confirm_groups(self) -> tuple[tuple[str, ...], ...]:
        return _groups(self.parts, "confirm_group")

    @cached_property
    def auxiliary(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parts if p.auxiliary)

    @cached_property
    def priced(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parts if p.priced)

    @cached_property
    def collector(self) -> str:
        """The part that takes the money (the payment): neither priced nor auxiliary. A change charges or
        refunds the price difference through it, a cancellation refunds through it."""
        (name,) = (p.name for p in self.parts if not p.priced and not p.auxiliary)
        return name

    @cached_property
    def optional(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parts if p.optional)

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(p for group in self.reserve_groups for p in group)

    def takes_part(self, participant: str, request: HasParts) -> bool:
        """Whether this trip has a step for the participant: always, unless the part is optional and
        the trip has none."""
        return participant not in self.optional or request.has_part(participant)

    def with_part(self, part: Part, *, version: int) -> SagaDefinition:
        """This definition with one more part, under a new version."""
        return replace(self, version=version, parts=(*self.parts, part))


# trip/1: flight (and optionally a hotel) in parallel, then the payment and the staged e-mail.
TRIP_SAGA_V1 = SagaDefinition(
    name="trip",
    version=1,
    parts=(
        Part("flight", reserve_group=1, confirm_group=1, priced=True),
        Part("hotel", reserve_group=1, confirm_group=1, priced=True, optional=True),
        Part("payment", reserve_group=2, confirm_group=2),
        Part("notify", reserve_group=2, confirm_group=3, auxiliary=True),
    ),
)

# trip/2: trip/1 and, optionally, a rental car reserved in parallel with the flight and the hotel.
CAR = Part("car", reserve_group=1, confirm_group=1, priced=True, optional=True)
TRIP_SAGA_V2 = TRIP_SAGA_V1.with_part(CAR, version=2)

# What new trips start under.
TRIP_SAGA = TRIP_SAGA_V2

# Every definition this coordinator can drive, by version: the current one and the older ones trips
# may still have been started under.
SAGAS: dict[int, SagaDefinition] = {s.version: s for s in (TRIP_SAGA_V1, TRIP_SAGA_V2)}


def definition_label(version: int, sagas: Mapping[int, SagaDefinition] = SAGAS) -> str:
    """'trip/2' for a known version; a version nobody here knows is named the same way."""
    known = sagas.get(version)
    return known.label if known is not None else f"{TRIP_SAGA.name}/{version}"


def unknown_definition(version: int, sagas: Mapping[int, SagaDefinition] = SAGAS) -> str:
    """Why a trip of this version is left alone, for logs and errors."""
    honoured = ", ".join(sagas[v].label for v in sorted(sagas))
    return (
        f"the trip started under saga definition {definition_label(version, sagas)}, which this coordinator "
        f"cannot drive (it knows {honoured}); it is left untouched for a coordinator that knows it"
    )
