"""The payment participant as the contract tests see it: requests, bad inputs, refusals, conservation."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.payment.models import ledger, payment_methods, reservations
from services.payment.seed import SCARCE_LIMIT_MINOR
from services.payment.servicer import SPEC
from tests.support.participant_case import BadInput, ParticipantCase, Refusal
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import payment_service_pb2 as payment_pb
from tripmesh.v1 import payment_service_pb2_grpc as payment_grpc

SCARCE_AMOUNT_MINOR = 1000
SCARCE_CAPACITY = SCARCE_LIMIT_MINOR // SCARCE_AMOUNT_MINOR  # pm_scarce_visa allows exactly 10 of them


def authorise(
    reservation_id: str,
    *,
    customer_id: str = "cust-ada",
    payment_method_id: str = "pm_ada_visa",
    minor_units: int = 12950,
    currency: str = "EUR",
) -> payment_pb.PaymentServiceReserveRequest:
    return payment_pb.PaymentServiceReserveRequest(
        reservation_id=reservation_id,
        customer_id=customer_id,
        payment_method_id=payment_method_id,
        amount=common_pb.Money(currency_code=currency, minor_units=minor_units),
    )


BAD_INPUTS = [
    BadInput("empty reservation id", lambda _rid: authorise(""), "reservation_id"),
    BadInput("empty customer id", lambda rid: authorise(rid, customer_id=""), "customer_id"),
    BadInput("unknown payment method", lambda rid: authorise(rid, payment_method_id="pm_nobody"), "payment_method_id"),
    BadInput(
        "another customer's payment method",
        lambda rid: authorise(rid, payment_method_id="pm_bob_mc"),
        "payment_method_id",
    ),
    BadInput("negative amount", lambda rid: authorise(rid, minor_units=-100), "amount.minor_units"),
    BadInput("zero amount", lambda rid: authorise(rid, minor_units=0), "amount.minor_units"),
    BadInput("currency we do not take", lambda rid: authorise(rid, currency="XYZ"), "amount.currency_code"),
    BadInput("currency other than the card's", lambda rid: authorise(rid, currency="GBP"), "amount.currency_code"),
]

REFUSALS = [
    Refusal(
        "card declined by the issuer",
        lambda rid: authorise(rid, payment_method_id="pm_ada_declined"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CARD_DECLINED",
    ),
    Refusal(
        "EUR 500 on a EUR 200 limit",
        lambda rid: authorise(rid, customer_id="cust-bob", payment_method_id="pm_bob_mc", minor_units=50_000),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
    ),
]


async def check_conservation(engine: AsyncEngine) -> list[str]:
    """Money conservation (I6) read from the database: counters, reservations and ledger agree."""
    async with engine.connect() as conn:
        methods = (await conn.execute(select(payment_methods))).all()
        rows = (await conn.execute(select(reservations))).all()
        entries = (await conn.execute(select(ledger))).all()
    problems: list[str] = []
    held: dict[str, int] = defaultdict(int)
    captured: dict[str, int] = defaultdict(int)
    kinds: dict[str, dict[str, int]] = defaultdict(dict)
    for entry in entries:
        kinds[entry.reservation_id][entry.kind] = entry.amount_minor
    by_id = {row.reservation_id: row for row in rows}
    for row in rows:
        if row.tombstone:
            if row.reservation_id in kinds:
                problems.append(f"tombstone {row.reservation_id} has ledger entries")
            continue
        method_id = row.details["payment_method_id"]
        held[method_id] += row.price_minor if row.status == "HELD" else 0
        captured[method_id] += row.price_minor if row.status == "CONFIRMED" else 0
        problems.extend(_ledger_problems(row, kinds.get(row.reservation_id, {})))
    problems.extend(f"ledger entries for unknown reservation {rid}" for rid in kinds if rid not in by_id)
    ledger_held, ledger_captured = _ledger_balances(entries)
    for m in methods:
        pm = m.payment_method_id
        if m.authorized_minor < 0 or m.captured_minor < 0:
            problems.append(f"{pm}: negative counter (authorized {m.authorized_minor}, captured {m.captured_minor})")
        if m.authorized_minor + m.captured_minor > m.credit_limit_minor:
            problems.append(f"{pm}: authorized + captured exceeds the credit limit {m.credit_limit_minor}")
        if m.authorized_minor != held[pm] or m.authorized_minor != ledger_held[pm]:
            problems.append(f"{pm}: authorized {m.authorized_minor}, HELD {held[pm]}, ledger {ledger_held[pm]}")
        if m.captured_minor != captured[pm] or m.captured_minor != ledger_captured[pm]:
            problems.append(
                f"{pm}: captured {m.captured_minor}, CONFIRMED {captured[pm]}, ledger {ledger_captured[pm]}"
            )
    return problems


_EXPECTED_KINDS = {
    "HELD": [{"AUTHORIZE"}],
    "CONFIRMED": [{"AUTHORIZE", "CAPTURE"}],
    "CANCELLED": [{"AUTHORIZE", "VOID"}, {"AUTHORIZE", "EXPIRE"}, {"AUTHORIZE", "CAPTURE", "REFUND"}],
    "EXPIRED": [{"AUTHORIZE", "EXPIRE"}, {"AUTHORIZE", "VOID"}],
}


def _ledger_problems(row: Any, booked: dict[str, int]) -> list[str]:
    problems = []
    if set(booked) not in _EXPECTED_KINDS[row.status]:
        problems.append(f"{row.reservation_id} is {row.status} but its ledger has {sorted(booked)}")
    if any(amount != row.price_minor for amount in booked.values()):
        problems.append(f"{row.reservation_id}: ledger amounts {booked} differ from its price {row.price_minor}")
    return problems


def _ledger_balances(entries: Sequence[Any]) -> tuple[dict[str, int], dict[str, int]]:
    held: dict[str, int] = defaultdict(int)
    captured: dict[str, int] = defaultdict(int)
    for entry in entries:
        pm, amount = entry.payment_method_id, entry.amount_minor
        match entry.kind:
            case "AUTHORIZE":
                held[pm] += amount
            case "CAPTURE":
                held[pm] -= amount
                captured[pm] += amount
            case "VOID" | "EXPIRE":
                held[pm] -= amount
            case "REFUND":
                captured[pm] -= amount
    return held, captured


CASE = ParticipantCase(
    name="payment",
    spec=SPEC,
    stub=payment_grpc.PaymentServiceStub,
    reserve_request=authorise,
    other_request=lambda rid: authorise(rid, minor_units=9900),
    confirm_request=lambda rid: payment_pb.PaymentServiceConfirmRequest(reservation_id=rid),
    cancel_request=lambda rid: payment_pb.PaymentServiceCancelRequest(reservation_id=rid),
    get_request=lambda rid: payment_pb.PaymentServiceGetReservationRequest(reservation_id=rid),
    bad_inputs=BAD_INPUTS,
    refusals=REFUSALS,
    scarce_request=lambda rid: authorise(
        rid, customer_id="cust-scarce", payment_method_id="pm_scarce_visa", minor_units=SCARCE_AMOUNT_MINOR
    ),
    scarce_capacity=SCARCE_CAPACITY,
    check_conservation=check_conservation,
)
