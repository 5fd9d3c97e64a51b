"""The payment participant as the contract tests see it: requests, bad inputs, refusals, conservation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from sqlalchemy import select

from services.kit.clock import FakeClock
from services.participant.runner import RunningParticipant, start_participant
from services.payment.audit import check_conservation as check_conservation  # re-exported for the tests
from services.payment.models import ledger, payment_methods
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


def refund(
    reservation_id: str,
    refund_of: Sequence[str],
    minor_units: int,
    *,
    customer_id: str = "cust-ada",
    payment_method_id: str = "pm_ada_visa",
) -> payment_pb.PaymentServiceReserveRequest:
    """A Reserve that pays `minor_units` back out of the charges `refund_of`, drawn on in that order."""
    request = authorise(
        reservation_id, customer_id=customer_id, payment_method_id=payment_method_id, minor_units=minor_units
    )
    request.refund_of.extend(refund_of)
    return request


def confirm(reservation_id: str) -> payment_pb.PaymentServiceConfirmRequest:
    return payment_pb.PaymentServiceConfirmRequest(reservation_id=reservation_id)


def cancel(reservation_id: str) -> payment_pb.PaymentServiceCancelRequest:
    return payment_pb.PaymentServiceCancelRequest(reservation_id=reservation_id)


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


CASE = ParticipantCase(
    name="payment",
    spec=SPEC,
    stub=payment_grpc.PaymentServiceStub,
    reserve_request=authorise,
    other_request=lambda rid: authorise(rid, minor_units=9900),
    confirm_request=confirm,
    cancel_request=cancel,
    get_request=lambda rid: payment_pb.PaymentServiceGetReservationRequest(reservation_id=rid),
    bad_inputs=BAD_INPUTS,
    refusals=REFUSALS,
    scarce_request=lambda rid: authorise(
        rid, customer_id="cust-scarce", payment_method_id="pm_scarce_visa", minor_units=SCARCE_AMOUNT_MINOR
    ),
    scarce_capacity=SCARCE_CAPACITY,
    check_conservation=check_conservation,
)


@dataclass
class PaymentServer:
    """A real payment server on port 0 with its own database and a fake clock, and a stub to call it."""

    running: RunningParticipant
    stub: payment_grpc.PaymentServiceAsyncStub
    clock: FakeClock

    async def counters(self, method_id: str = "pm_ada_visa") -> tuple[int, int]:
        """(authorized, captured) of a payment method, read from the database."""
        c = payment_methods.c
        async with self.running.engine.connect() as conn:
            row = (
                await conn.execute(select(c.authorized_minor, c.captured_minor).where(c.payment_method_id == method_id))
            ).one()
        return int(row[0]), int(row[1])

    async def ledger_of(self, reservation_id: str) -> list[tuple[str, int]]:
        async with self.running.engine.connect() as conn:
            rows = await conn.execute(
                select(ledger.c.kind, ledger.c.amount_minor)
                .where(ledger.c.reservation_id == reservation_id)
                .order_by(ledger.c.entry_id)
            )
            return [(str(kind), int(amount)) for kind, amount in rows]


@asynccontextmanager
async def payment_server(database_url: str, hold_seconds: float) -> AsyncIterator[PaymentServer]:
    clock = FakeClock()
    running = await start_participant(
        SPEC, database_url=database_url, clock=clock, hold_seconds=hold_seconds, sweep_seconds=None
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield PaymentServer(running, payment_grpc.PaymentServiceStub(channel), clock)  # type: ignore[arg-type]
    finally:
        await running.stop()
