"""The payment service's conservation rule (I6), read from its own database: money adds up.

Counters, reservations and the ledger must agree, and so must each captured charge's refunds (set aside
and paid back) with the refunds drawn on it. Shared by the product audit (coordinator/audit.py,
`tripmesh audit`) and the contract tests (tests/support/cases/payment.py), so both judge a database by
one piece of logic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.payment.models import charges, ledger, payment_methods, refund_allocations, reservations


async def check_conservation(engine: AsyncEngine) -> list[str]:
    """Money conservation read from the database: every payment method's authorised and captured
    counters equal both its HELD / CONFIRMED reservations and its ledger, within its credit limit, and
    every reservation's ledger entries fit its status. A refund moves no counter while held and lowers
    captured when paid out. Empty when all is well."""
    async with engine.connect() as conn:
        methods = (await conn.execute(select(payment_methods))).all()
        rows = (await conn.execute(select(reservations))).all()
        entries = (await conn.execute(select(ledger))).all()
        charge_rows = (await conn.execute(select(charges))).all()
        shares = (await conn.execute(select(refund_allocations))).all()
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
        refund = _is_refund(row)
        held[method_id] += row.price_minor if row.status == "HELD" and not refund else 0
        if row.status == "CONFIRMED":
            captured[method_id] += -row.price_minor if refund else row.price_minor
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
    problems.extend(_charge_problems(by_id, charge_rows, shares))
    return problems


def _is_refund(row: Any) -> bool:
    return bool(row.details.get("refund_of"))


def _charge_problems(by_id: dict[str, Any], charge_rows: Sequence[Any], shares: Sequence[Any]) -> list[str]:
    """Each captured charge has its row; what its refunds set aside and paid back is what they say."""
    problems = []
    set_aside: dict[str, int] = defaultdict(int)
    paid: dict[str, int] = defaultdict(int)
    allocated: dict[str, int] = defaultdict(int)
    for share in shares:
        refund = by_id.get(share.refund_id)
        allocated[share.refund_id] += share.amount_minor
        if refund is None or not _is_refund(refund):
            problems.append(f"refund allocation of {share.refund_id} on {share.charge_id}: no such refund")
        elif refund.status == "HELD":
            set_aside[share.charge_id] += share.amount_minor
        elif refund.status == "CONFIRMED":
            paid[share.charge_id] += share.amount_minor
    for rid, row in by_id.items():
        if _is_refund(row) and allocated[rid] != row.price_minor:
            problems.append(f"refund {rid} of {row.price_minor} has {allocated[rid]} allocated on its charges")
    by_charge = {c.reservation_id: c for c in charge_rows}
    for rid, row in by_id.items():
        if row.status == "CONFIRMED" and not _is_refund(row) and rid not in by_charge:
            problems.append(f"captured charge {rid} has no charges row")
    for c in charge_rows:
        owner = by_id.get(c.reservation_id)
        closed = owner is not None and owner.status == "CANCELLED"  # the charge itself was refunded in full
        want_paid = c.captured_minor if closed else paid[c.reservation_id]
        if owner is None or owner.price_minor != c.captured_minor:
            problems.append(f"charge {c.reservation_id}: captured {c.captured_minor}, not its reservation's price")
        if c.refund_held_minor != set_aside[c.reservation_id] or c.refunded_minor != want_paid:
            problems.append(
                f"charge {c.reservation_id}: refund held {c.refund_held_minor}, refunded {c.refunded_minor}; its"
                f" refunds say {set_aside[c.reservation_id]} and {want_paid}"
            )
    return problems


_EXPECTED_KINDS = {
    "HELD": [{"AUTHORIZE"}],
    "CONFIRMED": [{"AUTHORIZE", "CAPTURE"}],
    "CANCELLED": [{"AUTHORIZE", "VOID"}, {"AUTHORIZE", "EXPIRE"}, {"AUTHORIZE", "CAPTURE", "REFUND"}],
    "EXPIRED": [{"AUTHORIZE", "EXPIRE"}, {"AUTHORIZE", "VOID"}],
}


_EXPECTED_REFUND_KINDS = {
    "HELD": [{"REFUND_HOLD"}],
    "CONFIRMED": [{"REFUND_HOLD", "REFUND"}],
    "CANCELLED": [{"REFUND_HOLD", "REFUND_RELEASE"}, {"REFUND_HOLD", "REFUND_EXPIRE"}],
    "EXPIRED": [{"REFUND_HOLD", "REFUND_EXPIRE"}, {"REFUND_HOLD", "REFUND_RELEASE"}],
}


def _ledger_problems(row: Any, booked: dict[str, int]) -> list[str]:
    problems = []
    expected = _EXPECTED_REFUND_KINDS if _is_refund(row) else _EXPECTED_KINDS
    if set(booked) not in expected[row.status]:
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
            case "REFUND":  # a captured charge cancelled, or a refund paid out
                captured[pm] -= amount
            case "REFUND_HOLD" | "REFUND_RELEASE" | "REFUND_EXPIRE":
                pass  # a refund set aside or given back moves no counter of the method
    return held, captured
