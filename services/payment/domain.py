"""The payment domain: what an authorisation holds (credit on a payment method) and how it moves.

Reserve authorises (authorized += amount), Confirm captures (authorized -> captured), Cancel voids a
hold (authorized -= amount) or refunds a capture (captured -= amount). A Reserve with `refund_of` is a
refund instead, drawn on earlier charges (services/payment/refunds.py). Each movement is one
conditional UPDATE on the method's counters plus one ledger row, in the store's transaction, so credit
is never given twice (P6) and every cent can be accounted for (I6).

Validation is plain functions at the top of this module, testable without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.clock import Clock
from services.kit.errors import FieldViolation, InvalidRequestError, PaymentDeclinedError
from services.kit.money import ACCEPTED_CURRENCIES, Money
from services.participant.states import Record, Status
from services.payment import refunds
from services.payment.models import ledger, payment_methods

INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
_ACCEPTED = ", ".join(sorted(ACCEPTED_CURRENCIES))


class LedgerKind(StrEnum):
    AUTHORIZE = "AUTHORIZE"
    CAPTURE = "CAPTURE"
    VOID = "VOID"
    REFUND = "REFUND"
    EXPIRE = "EXPIRE"
    # A refund's own movements (its payout is a REFUND): set aside, given back on cancel or on expiry.
    REFUND_HOLD = "REFUND_HOLD"
    REFUND_RELEASE = "REFUND_RELEASE"
    REFUND_EXPIRE = "REFUND_EXPIRE"


@dataclass(frozen=True, slots=True)
class PaymentDetails:
    """One Reserve (authorisation) request, parsed from the proto."""

    reservation_id: str
    customer_id: str
    payment_method_id: str
    amount: Money
    refund_of: tuple[str, ...] = ()  # non-empty: a refund drawn on these charges, in this order


@dataclass(frozen=True, slots=True)
class MethodFacts:
    """What validation needs to know about a stored payment method."""

    payment_method_id: str
    customer_id: str
    currency: str
    always_declines: bool


@dataclass(frozen=True, slots=True)
class PaymentMethodView:
    payment_method_id: str
    customer_id: str
    brand: str
    last4: str
    credit_limit: Money
    available: Money


# --- pure validation ---------------------------------------------------------------------------------


def amount_violations(amount: Money) -> list[FieldViolation]:
    if not amount.currency:
        return [FieldViolation("amount.currency_code", f"must be set; we take {_ACCEPTED}")]
    if amount.currency not in ACCEPTED_CURRENCIES:
        return [FieldViolation("amount.currency_code", f"we do not take {amount.currency}; we take {_ACCEPTED}")]
    if amount.minor_units <= 0:
        return [
            FieldViolation(
                "amount.minor_units", f"must be positive (in cents: 12950 is 129.50), got {amount.minor_units}"
            )
        ]
    return []


def validate_customer_id(customer_id: str) -> None:
    if not customer_id.strip():
        raise InvalidRequestError.of("customer_id", "must not be empty")


def validate_payment(details: PaymentDetails) -> None:
    """Reject a malformed authorisation request before anything is read or written (P7)."""
    violations: list[FieldViolation] = []
    if not details.customer_id.strip():
        violations.append(FieldViolation("customer_id", "must not be empty"))
    if not details.payment_method_id.strip():
        violations.append(FieldViolation("payment_method_id", "must not be empty"))
    violations.extend(amount_violations(details.amount))
    violations.extend(refunds.refund_of_violations(details.refund_of))
    if violations:
        raise InvalidRequestError(violations)


def check_method(details: PaymentDetails, method: MethodFacts | None) -> None:
    """Whether this method may be charged for this request (unknown, someone else's, wrong currency, declines)."""
    if method is None or method.customer_id != details.customer_id:
        # One message for both cases, so that ids of other customers' methods cannot be probed.
        raise InvalidRequestError.of(
            "payment_method_id",
            f"customer {details.customer_id!r} has no payment method {details.payment_method_id!r}",
        )
    if method.currency != details.amount.currency:
        raise InvalidRequestError.of(
            "amount.currency_code",
            f"payment method {method.payment_method_id!r} is charged in {method.currency}, "
            f"not {details.amount.currency}",
        )
    if method.always_declines and not details.refund_of:  # an issuer never declines money paid back
        raise PaymentDeclinedError(
            "the card issuer declined the authorisation; try another payment method",
            metadata={"payment_method_id": method.payment_method_id},
        )


def release_kind(record: Record, now: datetime) -> LedgerKind:
    """How releasing a reservation is booked: a refund of a capture, or a void/expiry of a hold (of a
    held refund: its release or expiry)."""
    if record.status is Status.CONFIRMED:
        return LedgerKind.REFUND
    if refunds.is_refund(record):
        return LedgerKind.REFUND_EXPIRE if record.is_expired(now) else LedgerKind.REFUND_RELEASE
    return LedgerKind.EXPIRE if record.is_expired(now) else LedgerKind.VOID


# --- the domain the reservation store plugs in -------------------------------------------------------

# The hot statements, built once (bind parameters b_*): no expression building or cache keys per call.
_pm = payment_methods.c
_FACTS = select(_pm.payment_method_id, _pm.customer_id, _pm.currency, _pm.always_declines).where(
    _pm.payment_method_id == bindparam("b_method")
)
_AUTHORIZE = (
    update(payment_methods)
    .where(
        _pm.payment_method_id == bindparam("b_method"),
        _pm.credit_limit_minor - _pm.authorized_minor - _pm.captured_minor >= bindparam("b_amount"),
    )
    .values(authorized_minor=_pm.authorized_minor + bindparam("b_amount"))
    .returning(_pm.payment_method_id)
)


def _movement(guard: Any, **values: Any) -> Any:
    return (
        update(payment_methods)
        .where(_pm.payment_method_id == bindparam("b_method"), guard)
        .values(**values)
        .returning(_pm.payment_method_id)
    )


_amount: Any = bindparam("b_amount")
_MOVES = {
    "CAPTURE": _movement(
        _pm.authorized_minor >= _amount,
        authorized_minor=_pm.authorized_minor - _amount,
        captured_minor=_pm.captured_minor + _amount,
    ),
    "REFUND": _movement(_pm.captured_minor >= _amount, captured_minor=_pm.captured_minor - _amount),
    "VOID": _movement(_pm.authorized_minor >= _amount, authorized_minor=_pm.authorized_minor - _amount),
}
_BOOK = insert(ledger)


class PaymentDomain:
    name = "payment"

    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def hold_expires(self, details: PaymentDetails) -> bool:
        """An authorisation runs out if never captured; a refund does not: once set aside it is owed to the
        customer until it is paid out or explicitly cancelled, so a cancellation that resumes late (a
        coordinator down past the hold time) still pays it, rather than finding it expired and stuck."""
        return not details.refund_of

    def to_json(self, details: PaymentDetails) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "customer_id": details.customer_id,
            "payment_method_id": details.payment_method_id,
            "amount_minor": details.amount.minor_units,
            "currency": details.amount.currency,
        }
        if details.refund_of:  # only then: an authorisation's fingerprint stays what it always was
            stored["refund_of"] = list(details.refund_of)
        return stored

    def hold(self, conn: Connection, details: PaymentDetails, reservation_id: str) -> Money:
        validate_payment(details)
        check_method(details, _method_facts(conn, details.payment_method_id))
        if details.refund_of:
            return self._hold_refund(conn, details)
        params = {"b_method": details.payment_method_id, "b_amount": details.amount.minor_units}
        if conn.execute(_AUTHORIZE, params).first() is None:
            raise PaymentDeclinedError(
                f"not enough credit left on {details.payment_method_id!r} for {details.amount}",
                reason=INSUFFICIENT_FUNDS,
                metadata={"payment_method_id": details.payment_method_id},
            )
        self._book(conn, details.reservation_id, details.payment_method_id, LedgerKind.AUTHORIZE, details.amount)
        return details.amount

    def confirm(self, conn: Connection, record: Record) -> None:
        if refunds.is_refund(record):
            refunds.pay_refund(conn, record.reservation_id)
            self._move(conn, record, LedgerKind.REFUND)
            return
        self._move(conn, record, LedgerKind.CAPTURE)
        refunds.record_charge(conn, record, str(record.details["payment_method_id"]))

    def release(self, conn: Connection, record: Record) -> None:
        kind = release_kind(record, self.clock.now())
        if refunds.is_refund(record):
            refunds.release_refund(conn, record)  # refuses a refund already paid out
            self._book_record(conn, record, kind)
            return
        if record.status is Status.CONFIRMED:
            refunds.close_charge(conn, record)  # refuses a charge that refunds were drawn on
        self._move(conn, record, kind)

    def _hold_refund(self, conn: Connection, details: PaymentDetails) -> Money:
        """Set a refund aside on the charges it names: validated against them under their locks."""
        found = refunds.charge_facts(conn, details.refund_of)
        refunds.check_charges(details.customer_id, details.payment_method_id, details.amount, details.refund_of, found)
        refunds.hold_refund(conn, details.reservation_id, details.amount.minor_units, details.refund_of, found)
        self._book(conn, details.reservation_id, details.payment_method_id, LedgerKind.REFUND_HOLD, details.amount)
        return details.amount

    async def list_methods(self, customer_id: str) -> list[PaymentMethodView]:
        validate_customer_id(customer_id)
        pm = payment_methods.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(payment_methods).where(pm.customer_id == customer_id).order_by(pm.payment_method_id)
            )
            return [
                PaymentMethodView(
                    payment_method_id=row.payment_method_id,
                    customer_id=row.customer_id,
                    brand=row.brand,
                    last4=row.last4,
                    credit_limit=Money(row.credit_limit_minor, row.currency),
                    available=Money(row.credit_limit_minor - row.authorized_minor - row.captured_minor, row.currency),
                )
                for row in rows
            ]

    def _move(self, conn: Connection, record: Record, kind: LedgerKind) -> None:
        """One conditional UPDATE of a method's counters for a stored reservation, and its ledger row."""
        method_id = str(record.details["payment_method_id"])
        statement = _MOVES["VOID" if kind is LedgerKind.EXPIRE else kind.value]
        if conn.execute(statement, {"b_method": method_id, "b_amount": record.price_minor}).first() is None:
            raise RuntimeError(f"payment method {method_id!r} counters out of step with {record.reservation_id!r}")
        self._book_record(conn, record, kind)

    def _book_record(self, conn: Connection, record: Record, kind: LedgerKind) -> None:
        method_id = str(record.details["payment_method_id"])
        self._book(conn, record.reservation_id, method_id, kind, Money(record.price_minor, record.currency))

    def _book(self, conn: Connection, reservation_id: str, method_id: str, kind: LedgerKind, amount: Money) -> None:
        conn.execute(
            _BOOK,
            {
                "reservation_id": reservation_id,
                "payment_method_id": method_id,
                "kind": kind.value,
                "amount_minor": amount.minor_units,
                "currency": amount.currency,
                "at": self.clock.now(),
            },
        )


def _method_facts(conn: Connection, method_id: str) -> MethodFacts | None:
    row = conn.execute(_FACTS, {"b_method": method_id}).first()
    if row is None:
        return None
    return MethodFacts(row.payment_method_id, row.customer_id, row.currency, bool(row.always_declines))
