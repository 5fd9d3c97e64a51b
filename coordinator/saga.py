"""The trip saga as data (ARCHITECTURE.md, the saga): which participants, in which groups, in what order.

Reserve groups run one after another, the participants of a group in parallel; compensation cancels
the groups in reverse. Confirm groups likewise, payment captured last so the customer is charged only
when everything else is confirmed. Auxiliary participants (the notification) never cause a
compensation: their failure is recorded and the trip goes on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SagaDefinition:
    version: int
    reserve_groups: tuple[tuple[str, ...], ...]
    confirm_groups: tuple[tuple[str, ...], ...]
    auxiliary: frozenset[str]
    # Whose reserve result is summed into the amount the payment participant authorises.
    priced: tuple[str, ...]

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(p for group in self.reserve_groups for p in group)


TRIP_SAGA = SagaDefinition(
    version=1,
    reserve_groups=(("flight", "hotel"), ("payment", "notify")),
    confirm_groups=(("flight", "hotel"), ("payment",), ("notify",)),
    auxiliary=frozenset({"notify"}),
    priced=("flight", "hotel"),
)
