"""The reservation transactions every participant shares: Reserve, Confirm, Cancel, Get, expiry (P1-P6).

Each call is one transaction on the service's own database, run whole on the database's worker
thread (kit.db.Database: one hop from the event loop per call): read the reservation row (locked
where the backend can), ask the pure state machine what to do, apply the domain's business change and
the row change together, commit. The primary key on reservation_id guards the race of two first Reserves
with one id: the loser re-reads and is answered as a repeat.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Row, Table, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from services.kit.clock import Clock
from services.kit.db import Database, db_retry
from services.kit.errors import (
    HoldExpiredError,
    InvalidRequestError,
    ReservationAbortedError,
    ReservationCancelledError,
    ReservationConflictError,
    ReservationNotFoundError,
)
from services.kit.money import CATALOGUE_CURRENCY
from services.participant.domain import DetailsT, ParticipantDomain
from services.participant.states import (
    Decision,
    Record,
    Status,
    on_cancel,
    on_confirm,
    on_reserve,
    reservation_id_problem,
)

T = TypeVar("T")


def check_reservation_id(reservation_id: str) -> None:
    problem = reservation_id_problem(reservation_id)
    if problem is not None:
        raise InvalidRequestError.of("reservation_id", problem)


def fingerprint(details: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(details, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ReservationStore(Generic[DetailsT]):
    def __init__(
        self,
        db: Database,
        table: Table,
        domain: ParticipantDomain[DetailsT],
        clock: Clock,
        hold_seconds: float,
    ) -> None:
        self.db = db
        self.table = table
        self.domain = domain
        self.clock = clock
        self.hold = timedelta(seconds=hold_seconds)
        self._facts: Callable[[Connection, Record], Any] | None = getattr(domain, "facts", None)
        # The hot statements, built once: SQLAlchemy then skips construction and cache-key work per call.
        t = table.c
        self._select = select(table).where(t.reservation_id == bindparam("b_id"))
        self._select_locked = self._select.with_for_update()
        self._insert = insert(table)
        self._move = (
            update(table)
            .where(t.reservation_id == bindparam("b_id"), t.status == bindparam("b_from"))
            .values(status=bindparam("b_to"), updated_at=bindparam("b_now"))
            .returning(*t)
        )

    async def reserve(self, reservation_id: str, details: DetailsT, *, raced: bool = False) -> Record:
        check_reservation_id(reservation_id)
        stored = self.domain.to_json(details)
        fp = fingerprint(stored)

        def work(conn: Connection) -> Record | Exception:
            now = self.clock.now()
            existing = self._read(conn, reservation_id)
            decision = on_reserve(existing, fp, now)
            if decision is Decision.HOLD:
                price = self.domain.hold(conn, details, reservation_id)
                record = Record(
                    reservation_id,
                    Status.HELD,
                    fp,
                    stored,
                    price.minor_units,
                    price.currency,
                    now + self.hold if _hold_expires(self.domain, details) else None,
                    now,
                    now,
                )
                conn.execute(self._insert, _row_values(record))
                return self._described(conn, record)
            if decision is Decision.EXPIRE:
                assert existing is not None
                self._expire(conn, existing, now)
            if decision is Decision.RETURN:
                return self._described(conn, _some(existing))
            return self._refusal(decision, reservation_id)

        try:
            outcome = await self._transaction(work)
        except IntegrityError:
            # Lost the race for a new id to a concurrent Reserve: answer as the repeat it is. Once only:
            # a second IntegrityError is a broken constraint, not a race.
            if raced:
                raise
            return await self.reserve(reservation_id, details, raced=True)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def confirm(self, reservation_id: str) -> Record:
        check_reservation_id(reservation_id)

        def work(conn: Connection) -> Record | Exception:
            now = self.clock.now()
            existing = self._read(conn, reservation_id)
            decision = on_confirm(existing, now)
            if decision is Decision.CONFIRM:
                assert existing is not None
                self.domain.confirm(conn, existing)
                return self._described(conn, self._transition(conn, existing, Status.CONFIRMED, now))
            if decision is Decision.EXPIRE:
                assert existing is not None
                self._expire(conn, existing, now)
            if decision is Decision.RETURN:
                return self._described(conn, _some(existing))
            return self._refusal(decision, reservation_id, confirming=True)

        outcome = await self._transaction(work)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def cancel(self, reservation_id: str, *, raced: bool = False) -> Record:
        check_reservation_id(reservation_id)

        def work(conn: Connection) -> Record:
            now = self.clock.now()
            existing = self._read(conn, reservation_id)
            decision = on_cancel(existing, now)
            if decision is Decision.TOMBSTONE:
                record = Record(
                    reservation_id, Status.CANCELLED, "", {}, 0, CATALOGUE_CURRENCY, None, now, now, tombstone=True
                )
                conn.execute(self._insert, _row_values(record))
                return record
            assert existing is not None
            if decision is Decision.RELEASE:
                self.domain.release(conn, existing)
                return self._transition(conn, existing, Status.CANCELLED, now)
            if decision is Decision.EXPIRE:
                return self._expire(conn, existing, now)
            return existing

        try:
            return await self._transaction(work)
        except IntegrityError:
            if raced:
                raise
            return await self.cancel(reservation_id, raced=True)

    async def get(self, reservation_id: str) -> Record:
        check_reservation_id(reservation_id)

        def work(conn: Connection) -> Record | None:
            existing = self._read(conn, reservation_id, lock=False)
            return None if existing is None else self._described(conn, existing)

        existing = await self.db.read(work)
        if existing is None:
            raise ReservationNotFoundError(f"no reservation {reservation_id!r}")
        return existing

    async def count_by_status(self) -> dict[str, int]:
        """How many reservations are in each status (tombstones count as CANCELLED), for the metrics.

        One GROUP BY over the (status, expire_at) index: read at scrape time, so right after a restart.
        """
        query = select(self.table.c.status, func.count()).group_by(self.table.c.status)

        def work(conn: Connection) -> dict[str, int]:
            return {str(status): int(count) for status, count in conn.execute(query)}

        return await self.db.read(work)

    async def expire_due(self, limit: int = 500) -> int:
        """Release every hold past its expiry (the sweeper's job); returns how many were expired."""

        def work(conn: Connection) -> int:
            now = self.clock.now()
            rows = conn.execute(
                select(self.table)
                .where(self.table.c.status == Status.HELD.value, self.table.c.expire_at <= now)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            records = [_record(row) for row in rows]
            for record in records:
                self._expire(conn, record, now)
            return len(records)

        return await self._transaction(work)

    async def _transaction(self, work: Callable[[Connection], T]) -> T:
        return await db_retry(functools.partial(self.db.transaction, work))

    def _read(self, conn: Connection, reservation_id: str, *, lock: bool = True) -> Record | None:
        row = conn.execute(self._select_locked if lock else self._select, {"b_id": reservation_id}).first()
        return None if row is None else _record(row)

    def _described(self, conn: Connection, record: Record) -> Record:
        """`record` with the domain's facts, read in the caller's transaction."""
        if self._facts is None:
            return record
        return dataclasses.replace(record, facts=self._facts(conn, record))

    def _transition(self, conn: Connection, record: Record, to: Status, now: datetime) -> Record:
        """One conditional UPDATE: moves the row only from the status it was read in."""
        row = conn.execute(
            self._move, {"b_id": record.reservation_id, "b_from": record.status.value, "b_to": to.value, "b_now": now}
        ).first()
        if row is None:
            raise ReservationAbortedError(f"reservation {record.reservation_id!r} changed concurrently; retry")
        return _record(row)

    def _expire(self, conn: Connection, record: Record, now: datetime) -> Record:
        self.domain.release(conn, record)
        return self._transition(conn, record, Status.EXPIRED, now)

    def _refusal(self, decision: Decision, reservation_id: str, *, confirming: bool = False) -> Exception:
        match decision:
            case Decision.REFUSE_CANCELLED if confirming:
                return ReservationCancelledError(
                    f"reservation {reservation_id!r} was cancelled; it cannot be confirmed"
                )
            case Decision.REFUSE_CONFLICT:
                return ReservationConflictError(f"reservation {reservation_id!r} already exists with different details")
            case Decision.REFUSE_CANCELLED:
                return ReservationAbortedError(
                    f"reservation {reservation_id!r} was cancelled; it cannot be reserved again"
                )
            case Decision.REFUSE_EXPIRED | Decision.EXPIRE:
                return HoldExpiredError(f"the hold {reservation_id!r} expired before it was confirmed")
            case Decision.REFUSE_NOT_FOUND:
                return ReservationNotFoundError(f"no reservation {reservation_id!r}")
        raise AssertionError(decision)


def _hold_expires(domain: ParticipantDomain[Any], details: Any) -> bool:
    """Whether a hold runs out if it is neither confirmed nor cancelled in time (P5). Every hold does,
    unless its domain says otherwise with `hold_expires(details)`: a payment's refund is money owed to
    the customer, released only by an explicit Cancel, never by the clock."""
    decide = getattr(domain, "hold_expires", None)
    return True if decide is None else bool(decide(details))


def _some(record: Record | None) -> Record:
    assert record is not None
    return record


def _record(row: Row[Any]) -> Record:
    m = row._mapping
    return Record(
        reservation_id=m["reservation_id"],
        status=Status(m["status"]),
        fingerprint=m["fingerprint"],
        details=m["details"],
        price_minor=m["price_minor"],
        currency=m["currency"],
        expire_at=m["expire_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        tombstone=bool(m["tombstone"]),
    )


def _row_values(record: Record) -> dict[str, Any]:
    return {
        "reservation_id": record.reservation_id,
        "status": record.status.value,
        "fingerprint": record.fingerprint,
        "details": record.details,
        "price_minor": record.price_minor,
        "currency": record.currency,
        "expire_at": record.expire_at,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "tombstone": record.tombstone,
    }
