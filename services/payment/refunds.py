"""Refunds: money paid back out of a customer's captured charges (a Reserve with `refund_of`).

A refund is a reservation like an authorisation, with its own movements:

- Reserve (hold) sets the amount aside on the charges it names, in the order given, each up to what it
  still has to give (captured - refund held - refunded): `charges.refund_held_minor` grows, one
  `refund_allocations` row per charge drawn on, ledger REFUND_HOLD. The method's counters do not move.
- Confirm pays it out: held becomes refunded on each charge, the method's captured_minor drops by the
  amount (its credit comes back), ledger REFUND.
- Cancel of a held refund, or its expiry, gives the shares back to the charges: REFUND_RELEASE or
  REFUND_EXPIRE. A refund paid out cannot be cancelled (REFUND_ALREADY_PAID), and neither can a charge
  that refunds were drawn on.

Validation and allocation are plain functions at the top, testable without I/O; the SQL on `charges`
and `refund_allocations` is all below them. The charges' rows are locked in id order before they are
read, so concurrent refunds of one charge queue up and never set aside more than was captured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from services.kit.errors import (
    ChargeNotCapturedError,
    FieldViolation,
    InvalidRequestError,
    RefundAlreadyPaidError,
    RefundExceedsCaptureError,
)
from services.kit.money import Money
from services.participant.states import Record, Status, reservation_id_problem
from services.payment.models import charges, refund_allocations, reservations


@dataclass(frozen=True, slots=True)
class ChargeFacts:
    """What refund validation needs to know about one reservation a refund names."""

    reservation_id: str
    customer_id: str
    payment_method_id: str
    status: str
    is_refund: bool
    refundable: int | None  # captured - refund held - refunded; None when it has no charges row


# --- pure validation and allocation ------------------------------------------------------------------


def refund_of_violations(refund_of: Sequence[str]) -> list[FieldViolation]:
    """Ids a refund names that are malformed or named twice (P7, before anything is read)."""
    violations = []
    seen: set[str] = set()
    for i, charge_id in enumerate(refund_of):
        problem = reservation_id_problem(charge_id)
        if problem is not None:
            violations.append(FieldViolation(f"refund_of[{i}]", problem))
        elif charge_id in seen:
            violations.append(FieldViolation(f"refund_of[{i}]", f"{charge_id!r} is named twice"))
        seen.add(charge_id)
    return violations


def check_charges(
    customer_id: str, method_id: str, amount: Money, refund_of: Sequence[str], found: Mapping[str, ChargeFacts]
) -> None:
    """Whether a refund of `amount` may be drawn on these charges: each one this customer's, on this
    method, and captured; and together they still have the amount to give."""
    for i, charge_id in enumerate(refund_of):
        facts = found.get(charge_id)
        if facts is None or facts.customer_id != customer_id or facts.payment_method_id != method_id:
            # One message for unknown and someone else's, so that other customers' ids cannot be probed.
            raise InvalidRequestError.of(
                f"refund_of[{i}]",
                f"customer {customer_id!r} has no payment {charge_id!r} on payment method {method_id!r}",
            )
    for charge_id in refund_of:
        facts = found[charge_id]
        if facts.is_refund or facts.status != Status.CONFIRMED.value or facts.refundable is None:
            what = "a refund" if facts.is_refund else facts.status
            raise ChargeNotCapturedError(
                f"payment {charge_id!r} is {what}, not a captured charge; only a captured charge can be refunded",
                metadata={"charge_id": charge_id},
            )
    available = sum(found[c].refundable or 0 for c in refund_of)
    if amount.minor_units > available:
        left = ", ".join(f"{c} {Money(found[c].refundable or 0, amount.currency)}" for c in refund_of)
        raise RefundExceedsCaptureError(
            f"a refund of {amount} exceeds what its charges have left to refund, {Money(available, amount.currency)}"
            f" ({left})",
            metadata={"requested_minor": str(amount.minor_units), "refundable_minor": str(available)},
        )


def allocate(amount_minor: int, refundable: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Shares of a refund per charge: drawn on in the order given, each up to what it has left."""
    shares = []
    left = amount_minor
    for charge_id, available in refundable:
        share = min(left, available)
        if share > 0:
            shares.append((charge_id, share))
            left -= share
    if left:
        raise AssertionError(f"{left} of the refund not allocated; check_charges should have refused it")
    return shares


# --- the SQL on charges and refund allocations ---------------------------------------------------------

_c = charges.c
_a = refund_allocations.c
_LOCK_CHARGES = (
    select(_c.reservation_id, _c.captured_minor, _c.refund_held_minor, _c.refunded_minor)
    .where(_c.reservation_id.in_(bindparam("b_ids", expanding=True)))
    .order_by(_c.reservation_id)
    .with_for_update()
)
_READ_RESERVATIONS = select(
    reservations.c.reservation_id, reservations.c.status, reservations.c.details, reservations.c.tombstone
).where(reservations.c.reservation_id.in_(bindparam("b_ids", expanding=True)))
_LOCK_CHARGE = (
    select(_c.refund_held_minor, _c.refunded_minor, _c.captured_minor)
    .where(_c.reservation_id == bindparam("b_charge"))
    .with_for_update()
)
_ALLOCATIONS = select(_a.charge_id, _a.amount_minor).where(_a.refund_id == bindparam("b_refund")).order_by(_a.charge_id)
_HOLD = (
    update(charges)
    .where(
        _c.reservation_id == bindparam("b_charge"),
        _c.captured_minor - _c.refund_held_minor - _c.refunded_minor >= bindparam("b_share"),
    )
    .values(refund_held_minor=_c.refund_held_minor + bindparam("b_share"))
    .returning(_c.reservation_id)
)
_PAY = (
    update(charges)
    .where(_c.reservation_id == bindparam("b_charge"), _c.refund_held_minor >= bindparam("b_share"))
    .values(
        refund_held_minor=_c.refund_held_minor - bindparam("b_share"),
        refunded_minor=_c.refunded_minor + bindparam("b_share"),
    )
    .returning(_c.reservation_id)
)
_RELEASE = (
    update(charges)
    .where(_c.reservation_id == bindparam("b_charge"), _c.refund_held_minor >= bindparam("b_share"))
    .values(refund_held_minor=_c.refund_held_minor - bindparam("b_share"))
    .returning(_c.reservation_id)
)
_CLOSE = update(charges).where(_c.reservation_id == bindparam("b_charge")).values(refunded_minor=_c.captured_minor)


def is_refund(record: Record) -> bool:
    return bool(record.details.get("refund_of"))


def charge_facts(conn: Connection, refund_of: Sequence[str]) -> dict[str, ChargeFacts]:
    """The named reservations as refund validation sees them; their charges' rows locked (in id order)."""
    ids = list(refund_of)
    left = {
        row.reservation_id: row.captured_minor - row.refund_held_minor - row.refunded_minor
        for row in conn.execute(_LOCK_CHARGES, {"b_ids": ids})
    }
    found = {}
    for row in conn.execute(_READ_RESERVATIONS, {"b_ids": ids}):
        details = row.details or {}
        if row.tombstone:
            continue  # a Cancel that came first: never a payment of anyone's
        found[row.reservation_id] = ChargeFacts(
            row.reservation_id,
            str(details.get("customer_id", "")),
            str(details.get("payment_method_id", "")),
            row.status,
            bool(details.get("refund_of")),
            left.get(row.reservation_id),
        )
    return found


def hold_refund(
    conn: Connection, refund_id: str, amount_minor: int, refund_of: Sequence[str], found: Mapping[str, ChargeFacts]
) -> None:
    """Set the refund's shares aside on its charges (validated and locked by the caller)."""
    shares = allocate(amount_minor, [(c, found[c].refundable or 0) for c in refund_of])
    for charge_id, share in shares:
        if conn.execute(_HOLD, {"b_charge": charge_id, "b_share": share}).first() is None:
            raise RuntimeError(f"charge {charge_id!r} changed under its lock while refund {refund_id!r} was held")
    conn.execute(
        insert(refund_allocations),
        [{"refund_id": refund_id, "charge_id": c, "amount_minor": share} for c, share in shares],
    )


def record_charge(conn: Connection, record: Record, method_id: str) -> None:
    """A charge was captured: from now on refunds may be drawn on it."""
    conn.execute(
        insert(charges),
        {
            "reservation_id": record.reservation_id,
            "payment_method_id": method_id,
            "currency": record.currency,
            "captured_minor": record.price_minor,
            "refund_held_minor": 0,
            "refunded_minor": 0,
        },
    )


def pay_refund(conn: Connection, refund_id: str) -> None:
    """Confirm of a held refund: each charge's share moves from held to refunded."""
    _each_share(conn, refund_id, _PAY)


def release_refund(conn: Connection, record: Record) -> None:
    """Cancel or expiry of a refund: a held one gives its shares back; a paid one is refused."""
    if record.status is Status.CONFIRMED:
        raise RefundAlreadyPaidError(
            f"the refund {record.reservation_id!r} was paid out; it cannot be taken back",
            metadata={"reservation_id": record.reservation_id},
        )
    _each_share(conn, record.reservation_id, _RELEASE)


def close_charge(conn: Connection, record: Record) -> None:
    """Cancel of a captured charge refunds all of it: allowed only while no refund was drawn on it."""
    row = conn.execute(_LOCK_CHARGE, {"b_charge": record.reservation_id}).first()
    if row is not None and (row.refund_held_minor or row.refunded_minor):
        currency = record.currency
        raise RefundAlreadyPaidError(
            f"refunds were drawn on the charge {record.reservation_id!r} (held "
            f"{Money(row.refund_held_minor, currency)}, paid {Money(row.refunded_minor, currency)}); it cannot be "
            "cancelled, refund what is left of it instead",
            metadata={"reservation_id": record.reservation_id},
        )
    conn.execute(_CLOSE, {"b_charge": record.reservation_id})


def _each_share(conn: Connection, refund_id: str, statement: Any) -> None:
    for charge_id, share in conn.execute(_ALLOCATIONS, {"b_refund": refund_id}).all():
        if conn.execute(statement, {"b_charge": charge_id, "b_share": share}).first() is None:
            raise RuntimeError(f"charge {charge_id!r} out of step with refund {refund_id!r}")
