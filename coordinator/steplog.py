"""StepLogStore: the only SQL on the coordinator's trips and steps (as DBOS's SystemDatabase).

Writes arrive as batches (coordinator/writer.py) and are group-committed: one transaction, one fsync,
for every trip that flushed meanwhile. The engine flushes before every call it sends, so a step's
intent is durable before the call leaves and the commit decision before any Confirm.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.models import steps, trips
from coordinator.trip import TERMINAL_STATES, Step, StepStatus, Trip, TripRequest, TripState
from coordinator.writer import GroupCommitter, NewTrip, StateWrite, StepWrite, Write
from services.kit.db import db_retry


class StepLogStore:
    def __init__(self, engine: AsyncEngine, *, durable: bool = True) -> None:
        """durable=False writes nothing at all: only for the benchmark's no-step-log limit."""
        self.engine = engine
        self.durable = durable
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        upsert = self._insert(steps)
        self._upsert_step = upsert.on_conflict_do_update(
            index_elements=[steps.c.trip_id, steps.c.name],
            set_={c: upsert.excluded[c] for c in STEP_UPDATE_COLUMNS},
        )
        self._committer = GroupCommitter(self._write_batch)

    async def flush(self, writes: Sequence[Write]) -> bool:
        """Make the writes durable (group-committed with other trips'); False if a NewTrip's id was taken."""
        if not self.durable:
            return True
        return await self._committer.flush(writes)

    async def close(self) -> None:
        await self._committer.close()

    async def _write_batch(self, writes: Sequence[Write]) -> set[str]:
        new_trips = [w for w in writes if isinstance(w, NewTrip)]
        step_rows = [w.values for w in writes if isinstance(w, StepWrite)]
        states = [w for w in writes if isinstance(w, StateWrite)]

        async def work() -> set[str]:
            async with self.engine.begin() as conn:
                conflicts: set[str] = set()
                for new in new_trips:
                    inserted = await conn.execute(
                        self._insert(trips)
                        .values(**new.values)
                        .on_conflict_do_nothing(index_elements=[trips.c.trip_id])
                    )
                    if inserted.rowcount != 1:
                        conflicts.add(new.trip_id)
                rows = [r for r in step_rows if r["trip_id"] not in conflicts]
                if rows:
                    await conn.execute(self._upsert_step, rows)
                for state in states:
                    if state.trip_id in conflicts:
                        continue
                    await conn.execute(
                        update(trips)
                        .where(trips.c.trip_id == state.trip_id)
                        .values(state=state.state, failure_reason=state.reason, updated_at=state.at)
                    )
                return conflicts

        return await db_retry(work)

    async def reopen(self, trip: Trip, state: TripState, step_names: list[str], now: datetime) -> bool:
        """Move a NEEDS_ATTENTION trip back to `state` with the named steps to be sent again, atomically.

        Conditional on the trip still being in NEEDS_ATTENTION, so two operators retrying at once reopen
        it once; returns False for the loser.
        """

        async def work() -> bool:
            async with self.engine.begin() as conn:
                moved = await conn.execute(
                    update(trips)
                    .where(trips.c.trip_id == trip.trip_id, trips.c.state == TripState.NEEDS_ATTENTION.value)
                    .values(state=state.value, updated_at=now)
                )
                if moved.rowcount != 1:
                    return False
                if step_names:
                    await conn.execute(
                        update(steps)
                        .where(steps.c.trip_id == trip.trip_id, steps.c.name.in_(step_names))
                        .values(status=StepStatus.STARTED.value, finished_at=None)
                    )
                return True

        return await db_retry(work)

    async def load(self, trip_id: str) -> Trip | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(trips).where(trips.c.trip_id == trip_id))).first()
            if row is None:
                return None
            step_rows = (await conn.execute(select(steps).where(steps.c.trip_id == trip_id))).all()
        trip = _trip(row)
        for step_row in step_rows:
            step = _step(step_row)
            trip.steps[step.name] = step
        return trip

    async def load_unfinished(self, batch: int = 1000) -> list[Trip]:
        """Every trip that is not terminal, with its steps, oldest first (a few queries, not one per trip)."""
        ids = await self.unfinished_trip_ids()
        found: list[Trip] = []
        async with self.engine.connect() as conn:
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                rows = (await conn.execute(select(trips).where(trips.c.trip_id.in_(chunk)))).all()
                by_id = {r.trip_id: _trip(r) for r in rows}
                for step_row in await conn.execute(select(steps).where(steps.c.trip_id.in_(chunk))):
                    step = _step(step_row)
                    by_id[step_row.trip_id].steps[step.name] = step
                found.extend(by_id[i] for i in chunk if i in by_id)
        return found

    async def unfinished_trip_ids(self) -> list[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(trips.c.trip_id)
                .where(trips.c.state.not_in([s.value for s in TERMINAL_STATES]))
                .order_by(trips.c.created_at)
            )
            return [r.trip_id for r in rows]

    async def count_open_by_state(self) -> dict[str, int]:
        """Trips not CONFIRMED or CANCELLED, by state (NEEDS_ATTENTION included), for the metrics.

        An IN over the open states walks only their part of the (state, created_at) index.
        """
        open_states = [s.value for s in TripState if s not in (TripState.CONFIRMED, TripState.CANCELLED)]
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(trips.c.state, func.count()).where(trips.c.state.in_(open_states)).group_by(trips.c.state)
            )
            return {str(state): int(count) for state, count in rows}

    async def list_trips(
        self, *, state: TripState | None, customer_id: str, page_size: int, page_token: str
    ) -> tuple[list[Trip], str]:
        query = select(trips).order_by(trips.c.created_at.desc(), trips.c.trip_id.desc()).limit(page_size + 1)
        if state is not None:
            query = query.where(trips.c.state == state.value)
        if customer_id:
            query = query.where(trips.c.customer_id == customer_id)
        if page_token:
            created_at, trip_id = decode_page_token(page_token)
            query = query.where(
                or_(trips.c.created_at < created_at, and_(trips.c.created_at == created_at, trips.c.trip_id < trip_id))
            )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            page = [_trip(r) for r in rows[:page_size]]
            if page:
                step_rows = await conn.execute(select(steps).where(steps.c.trip_id.in_([t.trip_id for t in page])))
                by_id = {t.trip_id: t for t in page}
                for step_row in step_rows:
                    step = _step(step_row)
                    by_id[step_row.trip_id].steps[step.name] = step
        next_token = encode_page_token(page[-1]) if len(rows) > page_size else ""
        return page, next_token


def encode_page_token(trip: Trip) -> str:
    body = json.dumps([trip.created_at.isoformat(), trip.trip_id]).encode()
    return base64.urlsafe_b64encode(body).decode()


def decode_page_token(token: str) -> tuple[datetime, str]:
    """Raises ValueError on a malformed token."""
    try:
        created_at, trip_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        return datetime.fromisoformat(created_at), str(trip_id)
    except (ValueError, TypeError) as error:
        raise ValueError("malformed page_token") from error


STEP_UPDATE_COLUMNS = (
    "status",
    "attempts",
    "started_at",
    "finished_at",
    "error_code",
    "error_reason",
    "error_message",
    "result",
)


def new_trip(trip: Trip) -> NewTrip:
    return NewTrip(trip.trip_id, _trip_values(trip))


def step_write(trip_id: str, step: Step) -> StepWrite:
    """A snapshot of the step as it is now (the step object goes on changing)."""
    return StepWrite(trip_id, _step_values(trip_id, step))


def state_write(trip: Trip) -> StateWrite:
    return StateWrite(trip.trip_id, trip.state.value, trip.failure_reason, trip.updated_at)


def _trip_values(trip: Trip) -> dict[str, Any]:
    return {
        "trip_id": trip.trip_id,
        "state": trip.state.value,
        "fingerprint": trip.request.fingerprint(),
        "request": trip.request.to_json(),
        "customer_id": trip.request.customer_id,
        "definition_version": trip.definition_version,
        "failure_reason": trip.failure_reason,
        "created_at": trip.created_at,
        "updated_at": trip.updated_at,
        "deadline_at": trip.deadline_at,
    }


def _trip(row: Row[Any]) -> Trip:
    m = row._mapping
    return Trip(
        request=TripRequest.from_json(m["request"]),
        state=TripState(m["state"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        deadline_at=m["deadline_at"],
        definition_version=m["definition_version"],
        failure_reason=m["failure_reason"],
    )


def _step_values(trip_id: str, step: Step) -> dict[str, Any]:
    return {
        "trip_id": trip_id,
        "name": step.name,
        "seq": step.seq,
        "status": step.status.value,
        "attempts": step.attempts,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "error_code": step.error_code,
        "error_reason": step.error_reason,
        "error_message": step.error_message,
        "result": step.result,
    }


def _step(row: Row[Any]) -> Step:
    m = row._mapping
    return Step(
        name=m["name"],
        seq=m["seq"],
        status=StepStatus(m["status"]),
        attempts=m["attempts"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        error_code=m["error_code"],
        error_reason=m["error_reason"],
        error_message=m["error_message"],
        result=m["result"],
    )
