"""The notification service's conservation rule, read from its own database: outbox and reservations agree.

Shared by the product audit (coordinator/audit.py, `tripmesh audit`) and the contract tests
(tests/support/cases/notify.py), so both judge a database by one piece of logic.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.notify.models import outbox, reservations


async def check_conservation(engine: AsyncEngine) -> list[str]:
    """Every confirmed message is in the outbox; nothing else is, unless discarded (or sent before a
    cancel). Empty when all is well."""
    async with engine.connect() as conn:
        rows = {r.reservation_id: r for r in (await conn.execute(select(reservations))).all()}
        queued = {r.reservation_id: r for r in (await conn.execute(select(outbox))).all()}
    confirmed = [rid for rid, row in rows.items() if row.status == "CONFIRMED"]
    problems = [f"confirmed {rid} has no outbox row" for rid in confirmed if rid not in queued]
    for rid, entry in queued.items():
        row = rows.get(rid)
        if row is None:
            problems.append(f"outbox row {rid} has no reservation")
            continue
        allowed = {"PENDING", "SENT"} if row.status == "CONFIRMED" else {"DISCARDED", "SENT"}
        if row.status in ("HELD", "EXPIRED") or entry.state not in allowed:
            problems.append(f"{rid} is {row.status} but its outbox row is {entry.state}")
        if (entry.recipient, entry.subject, entry.body) != (
            row.details["recipient"],
            row.details["subject"],
            row.details["body"],
        ):
            problems.append(f"outbox row {rid} differs from the staged message")
        if (entry.state == "SENT") != (entry.sent_at is not None):
            problems.append(f"outbox row {rid} is {entry.state} with sent_at {entry.sent_at}")
    return problems
