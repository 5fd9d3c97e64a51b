"""StepLogStore: the only SQL on the coordinator's trips, steps and leases (as DBOS's SystemDatabase).

Writes arrive as batches (coordinator/writer.py) and are group-committed: one transaction, one fsync,
for every trip that flushed meanwhile. The engine flushes before every call it sends, so a step's
intent is durable before the call leaves and the commit decision before any Confirm.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from coordinator.models import steps, trip_leases, trips
from coordinator.trip import (
    TERMINAL_STATES,
    Operation,
    Step,
    StepStatus,
    Trip,
    TripRequest,
    TripState,
    fingerprint_of,
)
from coordinator.writer import BatchResult, GroupCommitter, Lease, NewTrip, StateWrite, StepWrite, Write
from services.kit.db import Database, db_retry

_TERMINAL = [s.value for s in TERMINAL_STATES]


def _now() -> datetime:
    """Lease times are wall-clock UTC, never the injected clock: a test's frozen clock must not stop
    leases from expiring. Safety does not rest on clocks (the token does); only takeover's timeliness."""
    return datetime.now(UTC)


def _grant(trip_id: str, fence: int, owner: str, at: datetime, reason: str) -> dict[str, Any]:
    return {"trip_id": trip_id, "fence": fence, "owner": owner, "acquired_at": at, "reason": reason}


class StepLogStore:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        durable: bool = True,
        replica_id: str = "local",
        lease_seconds: float = 10.0,
        versions: Collection[int] | None = None,
        writer: Database | None = None,
    ) -> None:
        """durable=False writes nothing at all: only for the benchmark's no-step-log limit.

        The group commit writes through `writer` (by default a one-connection `Database` on the engine's
        URL): a whole batch is one hop to its thread, not one per statement as through the AsyncEngine's
        driver; at c=1 those hops were most of what the step log cost the coordinator.

        `replica_id` names this coordinator process in the leases it takes (coordinator/lease.py); it
        may be set after construction, before the first write. `versions`: the saga definition versions
        this coordinator can drive; it never claims (leases) a trip of another version. None: any.
        """
        self.engine = engine
        self.writer = writer or Database(engine.url.render_as_string(hide_password=False), pool_size=1)
        self.versions = None if versions is None else sorted(versions)
        self.durable = durable
        self.replica_id = replica_id
        self.lease = timedelta(seconds=lease_seconds)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        upsert = self._insert(steps)
        self._upsert_step = upsert.on_conflict_do_update(
            index_elements=[steps.c.trip_id, steps.c.name],
            set_={c: upsert.excluded[c] for c in STEP_UPDATE_COLUMNS},
        )
        # The batch's statements, built once: per batch SQLAlchemy then only looks up the compiled form
        # (building them per batch was a third of the coordinator's CPU at c=1). An UPDATE with no
        # .values() takes its SET columns from the parameters of each execution.
        self._insert_trip = (
            self._insert(trips).on_conflict_do_nothing(index_elements=[trips.c.trip_id]).returning(trips.c.trip_id)
        )
        self._insert_grants = insert(trip_leases)
        self._lock_leases = (
            select(trips.c.trip_id, trips.c.owner, trips.c.fence)
            .where(trips.c.trip_id.in_(bindparam("b_ids", expanding=True)))
            .order_by(trips.c.trip_id)
            .with_for_update()
        )
        self._update_state = update(trips).where(
            trips.c.trip_id == bindparam("b_id"), trips.c.fence == bindparam("b_fence")
        )
        self._committer = GroupCommitter(self._write_batch)

    async def flush(self, writes: Sequence[Write]) -> bool:
        """Make the writes durable (group-committed with other trips'); False if a NewTrip's id was taken.

        Raises StaleLeaseError when the writes carry a token the trip has moved past.
        """
        if not self.durable:
            return True
        return await self._committer.flush(writes)

    async def close(self) -> None:
        await self._committer.close()
        await self.writer.dispose()

    async def _write_batch(self, writes: Sequence[Write]) -> BatchResult:
        return await db_retry(lambda: self.writer.transaction(lambda conn: self._write_batch_in(conn, writes)))

    def _write_batch_in(self, conn: Connection, writes: Sequence[Write]) -> BatchResult:
        """The batch, in one transaction on the writer's thread (synchronous: no hop per statement)."""
        new_trips = [w for w in writes if isinstance(w, NewTrip)]
        new_ids = {w.trip_id for w in new_trips}
        existing = sorted({w.trip_id for w in writes} - new_ids)
        me = self.replica_id
        now = _now()
        conflicts: set[str] = set()
        if new_trips:  # one multi-row INSERT; RETURNING names the rows inserted, the rest were taken
            until = now + self.lease
            rows = [{**w.values, "owner": me, "fence": w.fence, "lease_expires_at": until} for w in new_trips]
            conflicts = new_ids - {r.trip_id for r in conn.execute(self._insert_trip, rows)}
        granted = [_grant(w.trip_id, w.fence, me, now, "new") for w in new_trips if w.trip_id not in conflicts]
        if granted:
            conn.execute(self._insert_grants, granted)
        # The fence check: the rows stay locked (PostgreSQL) until this batch commits, so a takeover
        # commits either before the check (and refuses these writes) or after them.
        leases: dict[str, Lease] = {}
        if existing:
            leases = {r.trip_id: Lease(r.owner, r.fence) for r in conn.execute(self._lock_leases, {"b_ids": existing})}
        leases.update({t: Lease(me, 1) for t in new_ids - conflicts})
        stale: dict[tuple[str, int], Lease] = {}
        accepted: list[Write] = []
        for w in writes:
            if w.trip_id in conflicts or isinstance(w, NewTrip):
                continue
            lease = leases.get(w.trip_id, Lease("", 0))
            if lease.fence == w.fence and lease.owner == me:
                accepted.append(w)
            else:
                stale[(w.trip_id, w.fence)] = lease
        rows = [{**w.values, "fence": w.fence, "owner": me} for w in accepted if isinstance(w, StepWrite)]
        if rows:
            conn.execute(self._upsert_step, rows)
        # A StateWrite carries the trip's whole state, so only a trip's last one in the batch is written;
        # then one executemany per set of columns (grouping must not put an older state after a newer).
        latest = {w.trip_id: w for w in accepted if isinstance(w, StateWrite)}
        updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for state in latest.values():
            values: dict[str, Any] = {"state": state.state, "failure_reason": state.reason, "updated_at": state.at}
            if state.terminal:
                values["lease_expires_at"] = None  # the lease ends with the trip
            if state.operations is not None:
                values["operations"] = state.operations
            values.update(b_id=state.trip_id, b_fence=state.fence)
            updates.setdefault(tuple(values), []).append(values)
        for same_columns in updates.values():
            conn.execute(self._update_state, same_columns)
        return BatchResult(conflicts, stale)

    # --- leases (coordinator/lease.py decides when; this is how) ------------------------------------

    async def claim_expired(self, limit: int) -> list[Trip]:
        """Take over up to `limit` unfinished trips whose lease has expired, soonest expired first.

        One conditional UPDATE: each trip's token goes up by one and this replica becomes its owner. On
        PostgreSQL the rows are picked `FOR UPDATE SKIP LOCKED`, so replicas scanning at once never
        claim the same trip (nor wait on each other's rows).
        """
        if limit <= 0:
            return []
        expired = and_(trips.c.lease_expires_at < _now(), trips.c.state.not_in(_TERMINAL))
        return await self._claim(expired, limit, "takeover")

    async def claim_own(self) -> list[Trip]:
        """At start: every unfinished trip leased to this replica id (its previous life), at once.

        No need to wait the lease out: the id is bound to this process's listening address, so the
        process that held these leases is gone; the token goes up all the same, so a straggler of it
        is fenced off.
        """
        own = and_(trips.c.owner == self.replica_id, trips.c.state.not_in(_TERMINAL))
        return await self._claim(own, None, "restart")

    async def claim_one(self, trip_id: str) -> Trip | None:
        """Take one unfinished trip whose lease has expired (or that is leased to nobody), or None."""
        free = and_(
            trips.c.trip_id == trip_id,
            trips.c.state.not_in(_TERMINAL),
            or_(trips.c.lease_expires_at < _now(), trips.c.lease_expires_at.is_(None)),
        )
        claimed = await self._claim(free, 1, "takeover")
        return claimed[0] if claimed else None

    async def renew(self, trip_ids: Sequence[str], chunk: int = 1000) -> set[str]:
        """Extend this replica's leases on these trips: one UPDATE per `chunk` trips. The ones renewed."""
        renewed: set[str] = set()

        async def work() -> None:
            until = _now() + self.lease
            async with self.engine.begin() as conn:
                for start in range(0, len(trip_ids), chunk):
                    mine = (
                        select(trips.c.trip_id)
                        .where(trips.c.trip_id.in_(trip_ids[start : start + chunk]), trips.c.owner == self.replica_id)
                        .order_by(trips.c.trip_id)
                        .with_for_update()
                    )
                    rows = await conn.execute(
                        update(trips)
                        .where(trips.c.trip_id.in_(mine.scalar_subquery()), trips.c.lease_expires_at.is_not(None))
                        .values(lease_expires_at=until)
                        .returning(trips.c.trip_id)
                    )
                    renewed.update(r.trip_id for r in rows)

        if trip_ids:
            await db_retry(work)
        return renewed

    async def release(self, trip_ids: Sequence[str]) -> None:
        """Let these leases expire now (a graceful stop): other replicas take the trips at their next scan."""
        if not trip_ids:
            return

        async def work() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(trips)
                    .where(
                        trips.c.trip_id.in_(list(trip_ids)),
                        trips.c.owner == self.replica_id,
                        trips.c.lease_expires_at.is_not(None),
                    )
                    .values(lease_expires_at=_now())
                )

        await db_retry(work)

    async def unknown_definitions(self, limit: int = 100) -> list[tuple[str, int]]:
        """Unfinished trips of a definition version this coordinator cannot drive (trip id, version)."""
        if self.versions is None:
            return []
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(trips.c.trip_id, trips.c.definition_version)
                .where(trips.c.state.not_in(_TERMINAL), trips.c.definition_version.not_in(self.versions))
                .order_by(trips.c.created_at)
                .limit(limit)
            )
            return [(r.trip_id, r.definition_version) for r in rows]

    async def _claim(self, condition: ColumnElement[bool], limit: int | None, reason: str) -> list[Trip]:
        me = self.replica_id
        if self.versions is not None:
            # A trip of a definition this coordinator cannot drive is left to one that can: not leased.
            condition = and_(condition, trips.c.definition_version.in_(self.versions))

        async def work() -> list[Trip]:
            now = _now()
            picked = select(trips.c.trip_id).where(condition).order_by(trips.c.lease_expires_at)
            if limit is not None:
                picked = picked.limit(limit)
            picked = picked.with_for_update(skip_locked=True)
            async with self.engine.begin() as conn:
                rows = (
                    await conn.execute(
                        update(trips)
                        .where(trips.c.trip_id.in_(picked.scalar_subquery()), condition)
                        .values(owner=me, fence=trips.c.fence + 1, lease_expires_at=now + self.lease)
                        .returning(trips.c.trip_id, trips.c.fence)
                    )
                ).all()
                if not rows:
                    return []
                await conn.execute(insert(trip_leases), [_grant(r.trip_id, r.fence, me, now, reason) for r in rows])
                return await self._load_many(conn, [r.trip_id for r in rows])

        return await db_retry(work)

    async def reopen(self, trip: Trip, state: TripState, step_names: list[str], now: datetime) -> bool:
        """Move a NEEDS_ATTENTION trip back to `state` with the named steps to be sent again, atomically.

        Conditional on the trip still being in NEEDS_ATTENTION, so two operators retrying at once reopen
        it once; returns False for the loser. The winner's replica takes the trip's lease with a new
        token (nobody drives a trip in NEEDS_ATTENTION, and a straggler that did is fenced off).
        """
        me = self.replica_id

        async def work() -> bool:
            async with self.engine.begin() as conn:
                where = (trips.c.state == TripState.NEEDS_ATTENTION.value,)
                fence = await self._take(conn, trip.trip_id, where, "retry", state=state.value, updated_at=now)
                if fence is None:
                    return False
                if step_names:
                    await conn.execute(
                        update(steps)
                        .where(steps.c.trip_id == trip.trip_id, steps.c.name.in_(step_names))
                        .values(status=StepStatus.STARTED.value, finished_at=None, fence=fence, owner=me)
                    )
                return True

        return await db_retry(work)

    async def begin_operation(self, trip: Trip, op: Operation, state: TripState, now: datetime) -> bool:
        """Start a change or cancellation of a CONFIRMED trip: record it and take the trip's lease, atomically.

        Conditional on the trip being CONFIRMED under the token it was read with, so of two requests at
        once only one begins (False for the other, which looks again). Durable before anything is sent.
        """
        operations = [*trip.operations_json(), op.to_json()]
        where = (trips.c.state == TripState.CONFIRMED.value, trips.c.fence == trip.fence)
        values = {"state": state.value, "operations": operations, "failure_reason": "", "updated_at": now}

        async def work() -> bool:
            async with self.engine.begin() as conn:
                return await self._take(conn, trip.trip_id, where, op.kind.value.lower(), **values) is not None

        return await db_retry(work)

    async def _take(
        self, conn: AsyncConnection, trip_id: str, where: tuple[Any, ...], reason: str, **values: Any
    ) -> int | None:
        """One conditional UPDATE of a trip (`where` and its id) that also leases it to this replica under
        the next token, and the grant's row; the new token, or None when the condition did not hold."""
        me = self.replica_id
        moved = (
            await conn.execute(
                update(trips)
                .where(trips.c.trip_id == trip_id, *where)
                .values(**values, owner=me, fence=trips.c.fence + 1, lease_expires_at=_now() + self.lease)
                .returning(trips.c.fence)
            )
        ).first()
        if moved is None:
            return None
        await conn.execute(insert(trip_leases), [_grant(trip_id, moved.fence, me, _now(), reason)])
        return int(moved.fence)

    async def load(self, trip_id: str) -> Trip | None:
        async def read() -> tuple[Row[Any] | None, list[Row[Any]]]:
            async with self.engine.connect() as conn:
                row = (await conn.execute(select(trips).where(trips.c.trip_id == trip_id))).first()
                if row is None:
                    return None, []
                return row, list((await conn.execute(select(steps).where(steps.c.trip_id == trip_id))).all())

        row, step_rows = await db_retry(read)  # a lost connection is retried, then TransientError
        if row is None:
            return None
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
                found.extend(await self._load_many(conn, ids[start : start + batch]))
        return found

    @staticmethod
    async def _load_many(conn: AsyncConnection, ids: list[str]) -> list[Trip]:
        """These trips with their steps, in the order given (two queries)."""
        rows = (await conn.execute(select(trips).where(trips.c.trip_id.in_(ids)))).all()
        by_id = {r.trip_id: _trip(r) for r in rows}
        for step_row in await conn.execute(select(steps).where(steps.c.trip_id.in_(ids))):
            step = _step(step_row)
            by_id[step_row.trip_id].steps[step.name] = step
        return [by_id[i] for i in ids if i in by_id]

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
    "fence",
    "owner",
)


def new_trip(trip: Trip) -> NewTrip:
    return NewTrip(trip.trip_id, _trip_values(trip), trip.fence)


def step_write(trip: Trip, step: Step) -> StepWrite:
    """A snapshot of the step as it is now (the step object goes on changing), under the trip's token."""
    return StepWrite(trip.trip_id, _step_values(trip.trip_id, step), trip.fence)


def state_write(trip: Trip) -> StateWrite:
    return StateWrite(
        trip.trip_id,
        trip.state.value,
        trip.failure_reason,
        trip.updated_at,
        trip.fence,
        trip.state.terminal,
        trip.operations_json() if trip.operations else None,
    )


def _trip_values(trip: Trip) -> dict[str, Any]:
    request = trip.request.to_json()
    return {
        "trip_id": trip.trip_id,
        "state": trip.state.value,
        "fingerprint": fingerprint_of(request),
        "request": request,
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
        owner=m["owner"],
        fence=m["fence"],
        operations=[Operation.from_json(op) for op in m["operations"] or ()],
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
