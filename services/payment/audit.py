"""The payment service's conservation rule (I6), read from its own database: money adds up.

Counters, reservations and the ledger must agree. Shared by the product audit (coordinator/audit.py,
`tripmesh audit`) and the contract tests (tests/support/cases/payment.py), so both judge a database by
one piece of logic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.payment.models import ledger, payment_methods, reservations


async def check_conservation(engine: AsyncEngine) -> list[str]:
    """Money conservation read from the database: every payment method's authorised and captured
    counters equal both its HELD / CONFIRMED reservations and its ledger, within its credit limit, and
    every reservation's ledger entries fit its status. Empty when all is well."""
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
