"""What the participant contract tests need to know about one service (one case per service).

Each service provides `tests/support/cases/<name>.py` with a module-level `CASE: ParticipantCase`.
tests/contract/test_participant_contract.py runs P1-P8 against every case over a real aio server on
port 0 with a real SQLite database, through the generated stubs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.participant.runner import ParticipantSpec


@dataclass(frozen=True)
class BadInput:
    """A malformed or impossible Reserve request (P7) and the field its error must name."""

    label: str
    build: Callable[[str], Any]  # reservation_id -> request
    field: str


@dataclass(frozen=True)
class Refusal:
    """A business refusal (P8): a Reserve request that is refused, with its code and ErrorInfo reason."""

    label: str
    build: Callable[[str], Any]
    code: grpc.StatusCode
    reason: str


@dataclass(frozen=True)
class ParticipantCase:
    name: str
    spec: ParticipantSpec
    stub: Callable[[grpc.aio.Channel], Any]
    reserve_request: Callable[[str], Any]  # a valid Reserve for reservation_id, one small unit of capacity
    other_request: Callable[[str], Any]  # a valid Reserve with different details (for P1 conflict)
    confirm_request: Callable[[str], Any]
    cancel_request: Callable[[str], Any]
    get_request: Callable[[str], Any]
    bad_inputs: list[BadInput]
    refusals: list[Refusal]
    # P6: a Reserve request that takes one unit of a scarce resource whose capacity is scarce_capacity;
    # the test sends several times that many concurrently and checks at most capacity succeed.
    scarce_request: Callable[[str], Any]
    scarce_capacity: int
    # Reads the service's database directly; returns a list of violations of "capacity = free + held +
    # confirmed" (I5) and of the service's own conservation rules. Empty when all is well.
    check_conservation: Callable[[AsyncEngine], Awaitable[list[str]]]
    extra: dict[str, Any] = field(default_factory=dict)
