"""What a participant service implements: its domain only (what is held, its price, its capacity).

The store calls these inside the transaction that writes the reservation row, so the business change
and the idempotency fence commit or roll back together. They are synchronous: the store runs the whole
transaction on the database's worker thread (services.kit.db.Database), never on the event loop.

A domain may also define `facts(conn, record) -> Any`: what its answers carry beside the reservation
row (flight: the seats held). The store calls it in the same transaction as the change (or the read)
whose record is answered, so the answer costs no second trip to the database, and puts the result in
`Record.facts` for the servicer to translate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from services.kit.money import Money

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from services.participant.states import Record

DetailsT = TypeVar("DetailsT")
DetailsContraT = TypeVar("DetailsContraT", contravariant=True)


class ParticipantDomain(Protocol[DetailsContraT]):
    """A service's domain, plugged into the shared reservation store."""

    name: str

    def to_json(self, details: DetailsContraT) -> dict[str, Any]:
        """The details as stored with the reservation (and fingerprinted for P1)."""
        ...

    def hold(self, conn: Connection, details: DetailsContraT, reservation_id: str) -> Money:
        """Take capacity for the details and price them; raise InvalidRequestError, SoldOutError, ...

        `reservation_id` names what is taken where a service keeps it per reservation (flight seats)."""
        ...

    def confirm(self, conn: Connection, record: Record) -> None:
        """Make the held capacity permanent (payment: capture)."""
        ...

    def release(self, conn: Connection, record: Record) -> None:
        """Give back what record holds; record.status says HELD or CONFIRMED (payment: void or refund)."""
        ...

    # Optional: `def hold_expires(self, details) -> bool`. A domain without it has every hold expire after
    # the service's hold time (P5); payment answers False for a refund, which only an explicit Cancel ends.
