"""PaymentService over a real aio server on port 0 and a real SQLite database: the money is checked in the DB.

Authorise, capture, void, refund and expiry each move the payment method's counters and append one
ledger row; refusals move nothing; concurrent authorisations never give a unit of credit twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import select

from services.kit.status import error_info
from services.participant.runner import start_participant
from services.payment.models import payment_methods
from services.payment.servicer import SPEC
from tests.support.cases.payment import (
    SCARCE_CAPACITY,
    authorise,
    cancel,
    check_conservation,
    confirm,
    payment_server,
)
from tests.support.cases.payment import PaymentServer as Payment
from tests.support.databases import Databases
from tests.support.status import field_violations
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import payment_service_pb2 as payment_pb
from tripmesh.v1 import payment_service_pb2_grpc as payment_grpc

pytestmark = [pytest.mark.contract, pytest.mark.postgresql]

HOLD_SECONDS = 60.0


@pytest.fixture
async def payment(databases: Databases) -> AsyncIterator[Payment]:
    async with payment_server(databases.url("payment"), HOLD_SECONDS) as server:
        yield server


async def test_authorise_holds_the_amount_and_prices_the_reservation(payment: Payment) -> None:
    response = await payment.stub.Reserve(authorise("t1/payment", minor_units=12_950))
    assert response.reservation.status == common_pb.RESERVATION_STATUS_HELD
    assert response.reservation.price == common_pb.Money(currency_code="EUR", minor_units=12_950)
    assert response.payment_method_id == "pm_ada_visa"
    assert await payment.counters() == (12_950, 0)
    assert await payment.ledger_of("t1/payment") == [("AUTHORIZE", 12_950)]
    again = await payment.stub.Reserve(authorise("t1/payment", minor_units=12_950))
    assert again.reservation == response.reservation
    assert await payment.counters() == (12_950, 0)


async def test_capture_moves_the_hold_to_captured(payment: Payment) -> None:
    await payment.stub.Reserve(authorise("t1/payment", minor_units=40_000))
    response = await payment.stub.Confirm(confirm("t1/payment"))
    assert response.reservation.status == common_pb.RESERVATION_STATUS_CONFIRMED
    await payment.stub.Confirm(confirm("t1/payment"))
    assert await payment.counters() == (0, 40_000)
    assert await payment.ledger_of("t1/payment") == [("AUTHORIZE", 40_000), ("CAPTURE", 40_000)]


async def test_cancel_of_a_hold_voids_it(payment: Payment) -> None:
    await payment.stub.Reserve(authorise("t1/payment", minor_units=40_000))
    response = await payment.stub.Cancel(cancel("t1/payment"))
    assert response.reservation.status == common_pb.RESERVATION_STATUS_CANCELLED
    await payment.stub.Cancel(cancel("t1/payment"))
    assert await payment.counters() == (0, 0)
    assert await payment.ledger_of("t1/payment") == [("AUTHORIZE", 40_000), ("VOID", 40_000)]


async def test_cancel_of_a_capture_refunds_it(payment: Payment) -> None:
    await payment.stub.Reserve(authorise("t1/payment", minor_units=40_000))
    await payment.stub.Confirm(confirm("t1/payment"))
    await payment.stub.Cancel(cancel("t1/payment"))
    await payment.stub.Cancel(cancel("t1/payment"))
    assert await payment.counters() == (0, 0)
    assert await payment.ledger_of("t1/payment") == [("AUTHORIZE", 40_000), ("CAPTURE", 40_000), ("REFUND", 40_000)]
    assert await check_conservation(payment.running.engine) == []


async def test_an_expired_hold_is_released_and_cannot_be_captured(payment: Payment) -> None:
    await payment.stub.Reserve(authorise("t1/payment", minor_units=40_000))
    payment.clock.advance(HOLD_SECONDS + 1)
    assert await payment.running.store.expire_due() == 1
    assert await payment.counters() == (0, 0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await payment.stub.Confirm(confirm("t1/payment"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await payment.ledger_of("t1/payment") == [("AUTHORIZE", 40_000), ("EXPIRE", 40_000)]
    assert await check_conservation(payment.running.engine) == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (authorise("t1/payment", currency="XYZ"), "amount.currency_code"),
        (authorise("t1/payment", currency="USD"), "amount.currency_code"),
        (authorise("t1/payment", minor_units=0), "amount.minor_units"),
        (authorise("t1/payment", payment_method_id="pm_bob_mc"), "payment_method_id"),
        (authorise("t1/payment", customer_id=""), "customer_id"),
    ],
)
async def test_bad_input_is_invalid_and_writes_nothing(
    payment: Payment, request_: payment_pb.PaymentServiceReserveRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await payment.stub.Reserve(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [field]
    assert await payment.counters() == (0, 0)
    assert await payment.ledger_of("t1/payment") == []


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (authorise("t1/payment", payment_method_id="pm_ada_declined"), "CARD_DECLINED"),
        (
            authorise("t1/payment", customer_id="cust-bob", payment_method_id="pm_bob_mc", minor_units=50_000),
            "INSUFFICIENT_FUNDS",
        ),
    ],
)
async def test_refusals_carry_a_reason_and_move_no_money(
    payment: Payment, request_: payment_pb.PaymentServiceReserveRequest, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await payment.stub.Reserve(request_)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert info is not None and info.reason == reason
    assert await payment.counters(request_.payment_method_id) == (0, 0)
    assert await payment.ledger_of("t1/payment") == []


async def test_concurrent_authorisations_never_exceed_the_credit_limit(payment: Payment) -> None:
    requests = [
        authorise(f"t{i}/payment", customer_id="cust-scarce", payment_method_id="pm_scarce_visa", minor_units=1000)
        for i in range(3 * SCARCE_CAPACITY)
    ]
    results = await asyncio.gather(*(payment.stub.Reserve(r) for r in requests), return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(results) - len(refused) == SCARCE_CAPACITY
    assert {(e.code(), getattr(error_info(e), "reason", None)) for e in refused} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")
    }
    assert await payment.counters("pm_scarce_visa") == (SCARCE_CAPACITY * 1000, 0)
    assert await check_conservation(payment.running.engine) == []


async def test_list_payment_methods_shows_credit_left_and_no_card_numbers(payment: Payment) -> None:
    await payment.stub.Reserve(authorise("t1/payment", minor_units=100_000))
    await payment.stub.Confirm(confirm("t1/payment"))
    await payment.stub.Reserve(authorise("t2/payment", minor_units=50_000))
    listed = await payment.stub.ListPaymentMethods(payment_pb.ListPaymentMethodsRequest(customer_id="cust-ada"))
    by_id = {m.payment_method_id: m for m in listed.payment_methods}
    assert set(by_id) == {"pm_ada_visa", "pm_ada_declined"}
    visa = by_id["pm_ada_visa"]
    assert (visa.brand, visa.last4, visa.customer_id) == ("visa", "4242", "cust-ada")
    assert visa.credit_limit == common_pb.Money(currency_code="EUR", minor_units=500_000)
    assert visa.available == common_pb.Money(currency_code="EUR", minor_units=350_000)
    nobody = await payment.stub.ListPaymentMethods(payment_pb.ListPaymentMethodsRequest(customer_id="cust-nobody"))
    assert list(nobody.payment_methods) == []


async def test_list_payment_methods_needs_a_customer(payment: Payment) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await payment.stub.ListPaymentMethods(payment_pb.ListPaymentMethodsRequest(customer_id=""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["customer_id"]


async def test_seed_runs_once(databases: Databases) -> None:
    url = databases.empty_url("payment")
    first = await start_participant(SPEC, database_url=url, sweep_seconds=None)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        await payment_grpc.PaymentServiceStub(channel).Reserve(authorise("t1/payment", minor_units=1000))
    await first.stop()
    second = await start_participant(SPEC, database_url=url, sweep_seconds=None)
    async with second.engine.connect() as conn:
        methods = (await conn.execute(select(payment_methods.c.payment_method_id))).all()
        authorized = (
            await conn.execute(
                select(payment_methods.c.authorized_minor).where(payment_methods.c.payment_method_id == "pm_ada_visa")
            )
        ).scalar_one()
    await second.stop()
    assert len(methods) == len({m[0] for m in methods}) >= 8
    assert authorized == 1000
