"""The notification domain: a staged message is held by Reserve and queued in the outbox by Confirm.

Nothing is scarce and nothing costs money: holding a message only validates and stores it (in the
reservation's details); Confirm writes the outbox row in the store's transaction; Cancel of a confirmed
message discards its outbox row if it was not sent yet (a sent e-mail cannot be recalled).

Validation is plain functions at the top of this module, testable without I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.clock import Clock
from services.kit.errors import FieldViolation, InvalidRequestError
from services.kit.money import CATALOGUE_CURRENCY, Money
from services.notify.models import outbox
from services.participant.states import Record, Status

SUBJECT_MAX_CHARS = 200
BODY_MAX_CHARS = 20_000
ADDRESS_MAX_CHARS = 254
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
FREE = Money(0, CATALOGUE_CURRENCY)


class DeliveryState(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    DISCARDED = "DISCARDED"


@dataclass(frozen=True, slots=True)
class MessageDetails:
    """One Reserve (staged message) request, parsed from the proto."""

    reservation_id: str
    recipient: str
    subject: str
    body: str


# --- pure validation ---------------------------------------------------------------------------------


def recipient_problem(value: str) -> str | None:
    """Why value is not one plain e-mail address (no display name, no list), or None when it is."""
    if not value.strip():
        return "must not be empty; give one e-mail address such as ada@example.com"
    if len(value) > ADDRESS_MAX_CHARS:
        return f"must be at most {ADDRESS_MAX_CHARS} characters, got {len(value)}"
    name, address = parseaddr(value)
    if name or address != value or not value.isprintable() or not _ADDRESS.match(value):
        return f"{value!r} is not a single e-mail address such as ada@example.com"
    return None


def text_problem(value: str, max_chars: int, *, single_line: bool) -> str | None:
    if not value.strip():
        return "must not be empty"
    if len(value) > max_chars:
        return f"must be at most {max_chars} characters, got {len(value)}"
    if single_line and ("\n" in value or "\r" in value):
        return "must be a single line"
    return None


def validate_message(details: MessageDetails) -> None:
    """Reject a malformed message before anything is written (P7), naming every bad field."""
    problems = {
        "recipient": recipient_problem(details.recipient),
        "subject": text_problem(details.subject, SUBJECT_MAX_CHARS, single_line=True),
        "body": text_problem(details.body, BODY_MAX_CHARS, single_line=False),
    }
    violations = [FieldViolation(field, problem) for field, problem in problems.items() if problem]
    if violations:
        raise InvalidRequestError(violations)


def delivery_state(status: Status, outbox_state: str | None) -> DeliveryState:
    """Where a message is: its outbox row says, else it is staged (HELD) or will never be sent."""
    if outbox_state is not None:
        return DeliveryState(outbox_state)
    if status in (Status.HELD, Status.CONFIRMED):
        return DeliveryState.PENDING
    return DeliveryState.DISCARDED


# --- the domain the reservation store plugs in -------------------------------------------------------


# The hot statements, built once: no expression building or cache keys per call.
_QUEUE = insert(outbox)
_STATE = select(outbox.c.state).where(outbox.c.reservation_id == bindparam("b_id"))
_DISCARD = (
    update(outbox)
    .where(outbox.c.reservation_id == bindparam("b_id"), outbox.c.state == DeliveryState.PENDING.value)
    .values(state=DeliveryState.DISCARDED.value)
)


class NotifyDomain:
    name = "notify"

    def __init__(self, engine: AsyncEngine, clock: Clock, on_queued: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        self.clock = clock
        self.on_queued = on_queued

    def to_json(self, details: MessageDetails) -> dict[str, Any]:
        return {"recipient": details.recipient, "subject": details.subject, "body": details.body}

    def hold(self, conn: Connection, details: MessageDetails, reservation_id: str) -> Money:
        validate_message(details)
        return FREE

    def confirm(self, conn: Connection, record: Record) -> None:
        conn.execute(
            _QUEUE,
            {
                "reservation_id": record.reservation_id,
                "recipient": record.details["recipient"],
                "subject": record.details["subject"],
                "body": record.details["body"],
                "state": DeliveryState.PENDING.value,
                "attempts": 0,
                "created_at": self.clock.now(),
            },
        )
        self.on_queued()

    def release(self, conn: Connection, record: Record) -> None:
        if record.status is not Status.CONFIRMED:
            return  # a staged message lives only in the reservation row, which the store cancels
        conn.execute(_DISCARD, {"b_id": record.reservation_id})

    def facts(self, conn: Connection, record: Record) -> DeliveryState:
        """The message's delivery state, from its outbox row (if it has one yet)."""
        state = conn.execute(_STATE, {"b_id": record.reservation_id}).scalar_one_or_none()
        return delivery_state(record.status, state)
