"""Refunds on a real payment server (port 0, real database): a Reserve with `refund_of` pays money back
out of the customer's captured charges, and never more than they captured.

Every test reads the money in the database (the method's counters, the charges' refund columns, the
allocations, the ledger) and ends with the conservation check, which sums the ledger against the
counters. Refusals are checked to change nothing at all: every payment table is compared before and after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from sqlalchemy import select, text, update

from services.kit.db import make_engine
from services.kit.migrate import migrate
from services.kit.money import Money
from services.payment.models import charges, ledger, payment_methods, refund_allocations, reservations
from tests.support.cases.payment import (
    PaymentServer,
    authorise,
    cancel,
    check_conservation,
    confirm,
    payment_server,
    refund,
)
from tests.support.databases import Databases
from tests.support.status import error_reason, field_violations
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import payment_service_pb2 as payment_pb

pytestmark = [pytest.mark.contract]

HOLD_SECONDS = 60.0
HELD = common_pb.RESERVATION_STATUS_HELD
CONFIRMED = common_pb.RESERVATION_STATUS_CONFIRMED
CANCELLED = common_pb.RESERVATION_STATUS_CANCELLED


@pytest.fixture
async def payment(databases: Databases) -> AsyncIterator[PaymentServer]:
    async with payment_server(databases.url("payment"), HOLD_SECONDS) as server:
        yield server


async def charge(payment: PaymentServer, rid: str, minor_units: int, **kwargs: Any) -> None:
    """A captured charge: authorised, then captured."""
    await payment.stub.Reserve(authorise(rid, minor_units=minor_units, **kwargs))
    await payment.stub.Confirm(confirm(rid))


async def refund_columns(payment: PaymentServer, charge_id: str) -> tuple[int, int, int]:
    """(captured, refund held, refunded) of a charge, from its charges row."""
    c = charges.c
    async with payment.running.engine.connect() as conn:
        row = (
            await conn.execute(
                select(c.captured_minor, c.refund_held_minor, c.refunded_minor).where(c.reservation_id == charge_id)
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def allocations(payment: PaymentServer, refund_id: str) -> dict[str, int]:
    a = refund_allocations.c
    async with payment.running.engine.connect() as conn:
        rows = await conn.execute(select(a.charge_id, a.amount_minor).where(a.refund_id == refund_id))
        return {str(charge_id): int(amount) for charge_id, amount in rows}


async def snapshot(payment: PaymentServer) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every payment table, to compare before and after a refused call."""
    tables = {
        "payment_methods": payment_methods,
        "reservations": reservations,
        "ledger": ledger,
        "charges": charges,
        "refund_allocations": refund_allocations,
    }
    async with payment.running.engine.connect() as conn:
        return {
            name: sorted((tuple(map(repr, row)) for row in await conn.execute(select(table))), key=repr)
            for name, table in tables.items()
        }


async def refused(payment: PaymentServer, call: Any) -> grpc.aio.AioRpcError:
    """Make a call that must be refused; check that it changed nothing in the database."""
    before = await snapshot(payment)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert await snapshot(payment) == before
    return caught.value


async def available(payment: PaymentServer, customer_id: str = "cust-ada", method: str = "pm_ada_visa") -> int:
    listed = await payment.stub.ListPaymentMethods(payment_pb.ListPaymentMethodsRequest(customer_id=customer_id))
    (found,) = [m for m in listed.payment_methods if m.payment_method_id == method]
    return found.available.minor_units


async def test_a_full_refund_is_set_aside_then_paid_out_and_the_credit_comes_back(payment: PaymentServer) -> None:
    await charge(payment, "t1/payment", 40_000)
    assert await available(payment) == 460_000
    held = await payment.stub.Reserve(refund("t1/payment.2", ["t1/payment"], 40_000))
    assert held.reservation.status == HELD
    assert held.reservation.price == common_pb.Money(currency_code="EUR", minor_units=40_000)
    assert await payment.counters() == (0, 40_000)  # set aside on the charge, the method not touched yet
    assert await refund_columns(payment, "t1/payment") == (40_000, 40_000, 0)
    assert await payment.ledger_of("t1/payment.2") == [("REFUND_HOLD", 40_000)]

    paid = await payment.stub.Confirm(confirm("t1/payment.2"))
    assert paid.reservation.status == CONFIRMED
    await payment.stub.Confirm(confirm("t1/payment.2"))  # idempotent: paid once
    assert await payment.counters() == (0, 0)
    assert await available(payment) == 500_000
    assert await refund_columns(payment, "t1/payment") == (40_000, 0, 40_000)
    assert await allocations(payment, "t1/payment.2") == {"t1/payment": 40_000}
    assert await payment.ledger_of("t1/payment.2") == [("REFUND_HOLD", 40_000), ("REFUND", 40_000)]
    assert await payment.ledger_of("t1/payment") == [("AUTHORIZE", 40_000), ("CAPTURE", 40_000)]
    got = await payment.stub.GetReservation(
        payment_pb.PaymentServiceGetReservationRequest(reservation_id="t1/payment.2")
    )
    assert got.reservation == paid.reservation
    assert await check_conservation(payment.running.engine) == []


async def test_partial_refunds_until_the_charge_is_exhausted(payment: PaymentServer) -> None:
    await charge(payment, "t1/payment", 30_000)
    for n in (2, 3, 4):
        await payment.stub.Reserve(refund(f"t1/payment.{n}", ["t1/payment"], 10_000))
        await payment.stub.Confirm(confirm(f"t1/payment.{n}"))
    assert await refund_columns(payment, "t1/payment") == (30_000, 0, 30_000)
    error = await refused(payment, payment.stub.Reserve(refund("t1/payment.5", ["t1/payment"], 1)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "REFUND_EXCEEDS_CAPTURE"
    assert str(Money(1, "EUR")) in (error.details() or "") and "0.00 EUR" in (error.details() or "")
    assert await payment.counters() == (0, 0)
    assert await check_conservation(payment.running.engine) == []


@pytest.mark.postgresql
async def test_a_refund_is_drawn_on_its_charges_in_the_order_given(payment: PaymentServer) -> None:
    await charge(payment, "t1/payment", 10_000)
    await charge(payment, "t1/payment.2", 20_000)
    await payment.stub.Reserve(refund("t1/payment.3", ["t1/payment.2", "t1/payment"], 25_000))
    assert await allocations(payment, "t1/payment.3") == {"t1/payment.2": 20_000, "t1/payment": 5_000}
    await payment.stub.Reserve(refund("t1/payment.4", ["t1/payment", "t1/payment.2"], 5_000))
    assert await allocations(payment, "t1/payment.4") == {"t1/payment": 5_000}
    assert await refund_columns(payment, "t1/payment") == (10_000, 10_000, 0)
    assert await refund_columns(payment, "t1/payment.2") == (20_000, 20_000, 0)
    error = await refused(payment, payment.stub.Reserve(refund("t1/payment.5", ["t1/payment", "t1/payment.2"], 1)))
    assert error_reason(error) == "REFUND_EXCEEDS_CAPTURE"
    await payment.stub.Confirm(confirm("t1/payment.3"))
    assert await refund_columns(payment, "t1/payment") == (10_000, 5_000, 5_000)
    assert await payment.counters() == (0, 5_000)
    assert await check_conservation(payment.running.engine) == []


@pytest.fixture
async def ledger_with_charges(payment: PaymentServer) -> PaymentServer:
    """Ada: a captured charge c/ada (20,000), a hold h/ada, a cancelled charge x/ada, a held refund
    r/ada (1,000 of c/ada); Bob: a captured charge c/bob (10,000)."""
    await charge(payment, "c/ada", 20_000)
    await payment.stub.Reserve(authorise("h/ada", minor_units=5_000))
    await charge(payment, "x/ada", 3_000)
    await payment.stub.Cancel(cancel("x/ada"))
    await payment.stub.Reserve(refund("r/ada", ["c/ada"], 1_000))
    await charge(payment, "c/bob", 10_000, customer_id="cust-bob", payment_method_id="pm_bob_mc")
    return payment


@pytest.mark.parametrize(
    ("request_", "code", "reason", "field"),
    [
        (refund("new", ["nobody/payment"], 100), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "refund_of[0]"),
        (refund("new", ["c/ada", "c/bob"], 100), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "refund_of[1]"),
        (refund("new", ["c/ada", "c/ada"], 100), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "refund_of[1]"),
        (refund("new", ["-bad id"], 100), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "refund_of[0]"),
        (refund("new", [""], 100), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "refund_of[0]"),
        (refund("new", ["c/ada"], 0), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", "amount.minor_units"),
        (
            refund("new", ["c/ada"], 100, payment_method_id="pm_ada_declined"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "refund_of[0]",
        ),
        (
            refund("new", ["c/ada"], 100, customer_id="cust-bob", payment_method_id="pm_bob_mc"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "refund_of[0]",
        ),
        (refund("new", ["h/ada"], 100), grpc.StatusCode.FAILED_PRECONDITION, "CHARGE_NOT_CAPTURED", None),
        (refund("new", ["x/ada"], 100), grpc.StatusCode.FAILED_PRECONDITION, "CHARGE_NOT_CAPTURED", None),
        (refund("new", ["r/ada"], 100), grpc.StatusCode.FAILED_PRECONDITION, "CHARGE_NOT_CAPTURED", None),
        (refund("new", ["c/ada"], 19_001), grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_CAPTURE", None),
    ],
    ids=[
        "unknown charge",
        "other customer's charge",
        "a charge named twice",
        "malformed id",
        "empty id",
        "zero amount",
        "charge of another method",
        "as someone else",
        "held charge",
        "cancelled charge",
        "a refund",
        "more than is left",
    ],
)
async def test_a_refund_that_cannot_be_drawn_is_refused_and_changes_nothing(
    ledger_with_charges: PaymentServer,
    request_: payment_pb.PaymentServiceReserveRequest,
    code: grpc.StatusCode,
    reason: str,
    field: str | None,
) -> None:
    payment = ledger_with_charges
    error = await refused(payment, payment.stub.Reserve(request_))
    assert (error.code(), error_reason(error)) == (code, reason)
    if field is not None:
        assert field_violations(error) == [field]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await payment.stub.GetReservation(payment_pb.PaymentServiceGetReservationRequest(reservation_id="new"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await check_conservation(payment.running.engine) == []


async def test_unknown_and_someone_elses_charge_read_alike(ledger_with_charges: PaymentServer) -> None:
    payment = ledger_with_charges
    unknown = await refused(payment, payment.stub.Reserve(refund("new", ["zz/bob"], 100)))
    bobs = await refused(payment, payment.stub.Reserve(refund("new", ["c/bob"], 100)))
    assert (unknown.details() or "").replace("zz/bob", "ID") == (bobs.details() or "").replace("c/bob", "ID")


async def test_a_card_that_now_declines_still_takes_a_refund(payment: PaymentServer) -> None:
    await charge(payment, "t1/payment", 10_000)
    async with payment.running.engine.begin() as conn:
        pm = payment_methods.c
        await conn.execute(
            update(payment_methods).where(pm.payment_method_id == "pm_ada_visa").values(always_declines=True)
        )
    await payment.stub.Reserve(refund("t1/payment.2", ["t1/payment"], 10_000))
    await payment.stub.Confirm(confirm("t1/payment.2"))
    assert await payment.counters() == (0, 0)
    assert await check_conservation(payment.running.engine) == []


async def test_a_resent_refund_is_the_same_refund_and_other_charges_conflict(payment: PaymentServer) -> None:
    await charge(payment, "t1/payment", 10_000)
    await charge(payment, "t1/payment.2", 10_000)
    first = await payment.stub.Reserve(refund("t1/payment.3", ["t1/payment.2", "t1/payment"], 12_000))
    again = await payment.stub.Reserve(refund("t1/payment.3", ["t1/payment.2", "t1/payment"], 12_000))
    assert again.reservation == first.reservation
    assert await refund_columns(payment, "t1/payment.2") == (10_000, 10_000, 0)
    assert await refund_columns(payment, "t1/payment") == (10_000, 2_000, 0)
    assert await payment.ledger_of("t1/payment.3") == [("REFUND_HOLD", 12_000)]
    error = await refused(payment, payment.stub.Reserve(refund("t1/payment.3", ["t1/payment", "t1/payment.2"], 12_000)))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await check_conservation(payment.running.engine) == []


async def test_cancelling_a_held_refund_frees_its_amount_for_another(payment: PaymentServer) -> None:
    await charge(payment, "t1/payment", 10_000)
    await payment.stub.Reserve(refund("t1/payment.2", ["t1/payment"], 10_000))
    error = await refused(payment, payment.stub.Reserve(refund("t1/payment.3", ["t1/payment"], 1)))
    assert error_reason(error) == "REFUND_EXCEEDS_CAPTURE"
    cancelled = await payment.stub.Cancel(cancel("t1/payment.2"))
    assert cancelled.reservation.status == CANCELLED
    await payment.stub.Cancel(cancel("t1/payment.2"))  # idempotent
    assert await payment.ledger_of("t1/payment.2") == [("REFUND_HOLD", 10_000), ("REFUND_RELEASE", 10_000)]
    assert await refund_columns(payment, "t1/payment") == (10_000, 0, 0)
    await payment.stub.Reserve(refund("t1/payment.3", ["t1/payment"], 10_000))
    assert await refund_columns(payment, "t1/payment") == (10_000, 10_000, 0)
    assert await payment.counters() == (0, 10_000)
    assert await check_conservation(payment.running.engine) == []


@pytest.mark.postgresql
async def test_a_paid_refund_cannot_be_cancelled(payment: PaymentServer) -> None:
    await charge(payment, "t1/payment", 10_000)
    await payment.stub.Reserve(refund("t1/payment.2", ["t1/payment"], 4_000))
    await payment.stub.Confirm(confirm("t1/payment.2"))
    for _ in range(2):  # refused each time, the same way
        error = await refused(payment, payment.stub.Cancel(cancel("t1/payment.2")))
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "REFUND_ALREADY_PAID")
        assert "paid out" in (error.details() or "")
    got = await payment.stub.GetReservation(
        payment_pb.PaymentServiceGetReservationRequest(reservation_id="t1/payment.2")
    )
    assert got.reservation.status == CONFIRMED
    assert await payment.counters() == (0, 6_000)
    assert await check_conservation(payment.running.engine) == []


async def test_a_held_refund_never_expires_and_is_paid_however_late_its_confirm(payment: PaymentServer) -> None:
    """A refund set aside is owed to the customer: the clock does not take it back (only a Cancel does), so
    a cancellation that resumes after the hold time still pays out instead of finding HOLD_EXPIRED."""
    await charge(payment, "t1/payment", 10_000)
    held = (await payment.stub.Reserve(refund("t1/payment.2", ["t1/payment"], 10_000))).reservation
    assert not held.HasField("expire_time")
    payment.clock.advance(HOLD_SECONDS * 10)
    assert await payment.running.store.expire_due() == 0
    await payment.stub.Confirm(confirm("t1/payment.2"))
    assert await payment.ledger_of("t1/payment.2") == [("REFUND_HOLD", 10_000), ("REFUND", 10_000)]
    assert await payment.counters() == (0, 0)
    assert await check_conservation(payment.running.engine) == []


async def test_a_charge_with_refunds_cannot_be_cancelled(payment: PaymentServer) -> None:
    await charge(payment, "t1/payment", 10_000)
    await payment.stub.Reserve(refund("t1/payment.2", ["t1/payment"], 3_000))
    error = await refused(payment, payment.stub.Cancel(cancel("t1/payment")))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "REFUND_ALREADY_PAID")
    await payment.stub.Confirm(confirm("t1/payment.2"))
    error = await refused(payment, payment.stub.Cancel(cancel("t1/payment")))
    assert error_reason(error) == "REFUND_ALREADY_PAID"
    assert await payment.counters() == (0, 7_000)
    assert await check_conservation(payment.running.engine) == []


async def test_a_charge_cancelled_in_full_cannot_be_refunded_again(payment: PaymentServer) -> None:
    await charge(payment, "t1/payment", 10_000)
    await payment.stub.Cancel(cancel("t1/payment"))
    assert await refund_columns(payment, "t1/payment") == (10_000, 0, 10_000)
    error = await refused(payment, payment.stub.Reserve(refund("t1/payment.2", ["t1/payment"], 1)))
    assert error_reason(error) == "CHARGE_NOT_CAPTURED"
    assert await payment.counters() == (0, 0)
    assert await check_conservation(payment.running.engine) == []


@pytest.mark.postgresql
async def test_concurrent_refunds_never_pay_back_more_than_was_captured(payment: PaymentServer) -> None:
    await charge(payment, "t1/payment", 10_000)
    await charge(payment, "t1/payment.2", 10_000)
    # 40 refunds of 1,000, half naming the charges one way round and half the other (no deadlock either).
    orders = (["t1/payment", "t1/payment.2"], ["t1/payment.2", "t1/payment"])
    requests = [refund(f"r{i}/payment", orders[i % 2], 1_000) for i in range(40)]
    results = await asyncio.wait_for(
        asyncio.gather(*(payment.stub.Reserve(r) for r in requests), return_exceptions=True), timeout=60
    )
    refusals = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert {(e.code(), error_reason(e)) for e in refusals} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_CAPTURE")
    }
    held = [r.reservation.reservation_id for r in results if isinstance(r, payment_pb.PaymentServiceReserveResponse)]
    assert len(held) == 20
    await asyncio.wait_for(asyncio.gather(*(payment.stub.Confirm(confirm(rid)) for rid in held)), timeout=60)
    assert await refund_columns(payment, "t1/payment") == (10_000, 0, 10_000)
    assert await refund_columns(payment, "t1/payment.2") == (10_000, 0, 10_000)
    assert await payment.counters() == (0, 0)
    assert await check_conservation(payment.running.engine) == []


@pytest.mark.postgresql
async def test_a_charge_captured_before_refunds_existed_can_be_refunded(databases: Databases) -> None:
    """Migration 0003 gives every charge captured before it its charges row."""
    url = databases.empty_url("payment")
    engine = make_engine(url)
    try:
        await migrate(engine, "payment", target="0002_reservation_status_check")
        async with engine.begin() as conn:
            for statement in OLD_CAPTURE:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()
    async with payment_server(url, HOLD_SECONDS) as payment:
        assert await refund_columns(payment, "old/payment") == (4_200, 0, 0)
        await payment.stub.Reserve(refund("old/payment.2", ["old/payment"], 4_200))
        await payment.stub.Confirm(confirm("old/payment.2"))
        assert await payment.counters() == (0, 0)
        assert await check_conservation(payment.running.engine) == []


NOW = "2027-03-01 10:00:00+00:00"
OLD_CAPTURE = [
    "INSERT INTO reservations (reservation_id, status, fingerprint, details, price_minor, currency, expire_at,"
    " created_at, updated_at, tombstone) VALUES ('old/payment', 'CONFIRMED', 'fp', '{\"customer_id\": \"cust-ada\","
    ' "payment_method_id": "pm_ada_visa", "amount_minor": 4200, "currency": "EUR"}\', 4200, \'EUR\', NULL,'
    f" '{NOW}', '{NOW}', false)",
    "UPDATE payment_methods SET captured_minor = 4200 WHERE payment_method_id = 'pm_ada_visa'",
    *(
        "INSERT INTO ledger (reservation_id, payment_method_id, kind, amount_minor, currency, at)"
        f" VALUES ('old/payment', 'pm_ada_visa', '{kind}', 4200, 'EUR', '{NOW}')"
        for kind in ("AUTHORIZE", "CAPTURE")
    ),
]
