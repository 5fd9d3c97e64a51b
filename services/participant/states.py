"""The participant state machine (P1-P5), pure: what to do with a call given the stored record.

    (none) --Reserve--> HELD --Confirm--> CONFIRMED
    (none) --Cancel---> CANCELLED (tombstone)        HELD/CONFIRMED --Cancel--> CANCELLED
    HELD --expiry--> EXPIRED

No I/O here: the store reads the record, asks these functions, and carries out the decision in the
same transaction as the domain's business change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

RESERVATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def reservation_id_problem(reservation_id: str) -> str | None:
    """What is wrong with a reservation id as a caller wrote it, or None when it is well-formed."""
    if not reservation_id:
        return "must not be empty"
    if not RESERVATION_ID.fullmatch(reservation_id):
        return "must be 1-128 characters of letters, digits and . _ : / - (starting alphanumeric)"
    return None


class Status(StrEnum):
    HELD = "HELD"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class Record:
    reservation_id: str
    status: Status
    fingerprint: str
    details: dict[str, Any]
    price_minor: int
    currency: str
    expire_at: datetime | None
    created_at: datetime
    updated_at: datetime
    tombstone: bool = False
    # What the service's domain read beside the row in the same transaction, for the answer (flight:
    # the seats held; notify: the delivery state); None where it reads nothing or was not asked.
    facts: Any = None

    def is_expired(self, now: datetime) -> bool:
        return self.status is Status.HELD and self.expire_at is not None and self.expire_at <= now


class Decision(StrEnum):
    HOLD = "HOLD"  # take a new hold
    RETURN = "RETURN"  # answer with the stored record, change nothing
    CONFIRM = "CONFIRM"
    RELEASE = "RELEASE"  # release a HELD or CONFIRMED reservation
    TOMBSTONE = "TOMBSTONE"  # record a cancel that came before any reserve (P3)
    EXPIRE = "EXPIRE"  # release a hold that outlived its expiry, then refuse the call (P5)
    REFUSE_CONFLICT = "REFUSE_CONFLICT"  # same id, other details (P1)
    REFUSE_CANCELLED = "REFUSE_CANCELLED"  # reserve after cancel (P4) / confirm after cancel
    REFUSE_EXPIRED = "REFUSE_EXPIRED"  # confirm after expiry (P5)
    REFUSE_NOT_FOUND = "REFUSE_NOT_FOUND"


def on_reserve(existing: Record | None, fingerprint: str, now: datetime) -> Decision:
    if existing is None:
        return Decision.HOLD
    if existing.status is Status.CANCELLED:
        return Decision.REFUSE_CANCELLED
    if existing.fingerprint != fingerprint:
        return Decision.REFUSE_CONFLICT
    if existing.is_expired(now):
        return Decision.EXPIRE
    if existing.status is Status.EXPIRED:
        return Decision.REFUSE_EXPIRED
    return Decision.RETURN


def on_confirm(existing: Record | None, now: datetime) -> Decision:
    if existing is None:
        return Decision.REFUSE_NOT_FOUND
    if existing.status is Status.CONFIRMED:
        return Decision.RETURN
    if existing.status is Status.CANCELLED:
        return Decision.REFUSE_CANCELLED
    if existing.status is Status.EXPIRED:
        return Decision.REFUSE_EXPIRED
    if existing.is_expired(now):
        return Decision.EXPIRE
    return Decision.CONFIRM


def on_cancel(existing: Record | None, now: datetime) -> Decision:
    if existing is None:
        return Decision.TOMBSTONE
    if existing.status in (Status.CANCELLED, Status.EXPIRED):
        return Decision.RETURN
    if existing.is_expired(now):
        return Decision.EXPIRE
    return Decision.RELEASE
