"""The mesh's invariants (ARCHITECTURE.md I1-I6 and I8), checked by reading every database directly.

Nothing here trusts the coordinator's answers: trips come from its step log tables, reservations from
each participant's own `reservations` table, inventory and money from the participants' counters, with
each service's conservation rule from its own package (services/<name>/audit.py). `tripmesh audit`
runs this on a local mesh's SQLite files (opened read-only), `tripmesh demo` after its run, and the
tests after theirs (tests/support/invariants.py is a thin wrapper), so all three judge by one piece of
logic.

I8 (one driver per trip at a time) is checked as far as a database can prove it: every lease grant
of a trip has its own token, the tokens run 1, 2, 3... with the trip holding the last, and every step
row was last written by the replica that held the token it carries (a write by anyone else under that
token would be two drivers at once). What a database cannot show: writes that were overwritten since
(a step row keeps its last version) and writes that were refused (they are in the refused replica's
log as `stale_write_refused`, which the takeover test reads), nor whether two replicas' participant
calls overlapped in time; the participants' own ledgers (I7) answer that one.

The check is exact on a quiet mesh (once the trips in flight have ended): a trip that is not terminal
yet is reported under I1, and a booking that starts between the reads of two databases could look
like a hold without a trip.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coordinator.saga import SAGAS, definition_label
from services.car.audit import check_conservation as car_conservation
from services.flight.audit import check_conservation as flight_conservation
from services.hotel.audit import check_conservation as hotel_conservation
from services.kit.db import database_url
from services.notify.audit import check_conservation as notify_conservation
from services.payment.audit import check_conservation as payment_conservation

Conservation = Callable[[AsyncEngine], Awaitable[list[str]]]

# Each participant's own conservation rule (I5 for inventory, I6 for money, the outbox for notify).
CONSERVATION: dict[str, Conservation] = {
    "flight": flight_conservation,
    "hotel": hotel_conservation,
    "payment": payment_conservation,
    "notify": notify_conservation,
    "car": car_conservation,
}
PARTICIPANTS = tuple(CONSERVATION)
TERMINAL = ("CONFIRMED", "CANCELLED", "NEEDS_ATTENTION")
OPTIONAL_PARTS = ("hotel", "car")
PRICED_PARTS = ("flight", "hotel", "car")  # what the payment captures is their sum
LIVE_STATUSES = ("HELD", "CONFIRMED")  # a reservation that holds something (a seat, a room, money)
MISSING = "missing"


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    status: str
    price_minor: int

    @property
    def trip_id(self) -> str:
        """The coordinator names reservations "{trip_id}/{participant}"."""
        return self.reservation_id.rsplit("/", 1)[0]


@dataclass(frozen=True)
class Orphan:
    """A reservation still HELD or CONFIRMED whose trip does not own it: the trip is missing, CANCELLED,
    or CONFIRMED while this part was never confirmed."""

    participant: str
    reservation_id: str
    status: str
    trip_state: str  # the trip's state, or "missing"


@dataclass(frozen=True)
class AuditReport:
    violations: list[str]
    trips_by_state: dict[str, int]
    # participant -> reservation status -> how many reservations
    holds: dict[str, dict[str, int]]
    orphans: list[Orphan] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def orphaned_holds(self) -> int:
        return len(self.orphans)

    @property
    def trips(self) -> int:
        return sum(self.trips_by_state.values())


@dataclass(frozen=True)
class _Trip:
    trip_id: str
    state: str
    failure_reason: str
    definition_version: int = 0


async def _trips(engine: AsyncEngine) -> dict[str, _Trip]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT trip_id, state, failure_reason, definition_version FROM trips"))
        return {r.trip_id: _Trip(r.trip_id, r.state, r.failure_reason or "", r.definition_version) for r in rows}


async def _reservations(engine: AsyncEngine) -> dict[str, Reservation]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT reservation_id, status, price_minor FROM reservations"))
        return {r.reservation_id: Reservation(r.reservation_id, r.status, r.price_minor) for r in rows}


def _orphan_state(part: Reservation, trip: _Trip | None) -> str | None:
    """The trip state that makes this reservation an orphan, or None when its trip owns it."""
    if part.status not in LIVE_STATUSES:
        return None
    if trip is None:
        return MISSING
    if trip.state == "CANCELLED" or (trip.state == "CONFIRMED" and part.status == "HELD"):
        return trip.state
    return None  # a trip in flight or in NEEDS_ATTENTION still owns what it holds


async def audit(coordinator_engine: AsyncEngine, participant_engines: Mapping[str, AsyncEngine]) -> AuditReport:
    """Read the step log, then every participant's database; every violation of I1-I6 as a sentence."""
    problems: list[str] = []
    trips = await _trips(coordinator_engine)
    held = {name: await _reservations(engine) for name, engine in participant_engines.items()}

    # I1: every accepted trip ended, or waits for an operator with a reason.
    for trip in trips.values():
        if trip.state not in TERMINAL:
            stranded = ""
            if trip.definition_version not in SAGAS:
                label = definition_label(trip.definition_version)
                stranded = f" under saga definition {label}, which this build cannot drive"
            problems.append(f"I1: trip {trip.trip_id} is still {trip.state}{stranded}")
        if trip.state == "NEEDS_ATTENTION" and not trip.failure_reason:
            problems.append(f"I1: trip {trip.trip_id} needs attention without a reason")

    for trip in trips.values():
        parts = {name: rows.get(f"{trip.trip_id}/{name}") for name, rows in held.items()}
        if trip.state == "CONFIRMED":
            problems.extend(_confirmed_problems(trip, parts))
        elif trip.state == "CANCELLED":
            # I3: nothing held or confirmed, no money kept.
            for name, part in parts.items():
                if part is not None and part.status in LIVE_STATUSES:
                    problems.append(f"I3: cancelled trip {trip.trip_id} still has {name} {part.status}")

    # I4: nothing held that belongs to no live trip.
    orphans: list[Orphan] = []
    for name, rows in held.items():
        for rid, part in rows.items():
            trip_state = _orphan_state(part, trips.get(part.trip_id))
            if trip_state is None:
                continue
            orphans.append(Orphan(name, rid, part.status, trip_state))
            if trip_state == MISSING:
                problems.append(f"I4: {name} {part.status} {rid} belongs to no trip")
            elif part.status == "HELD":
                problems.append(f"I4: {name} still HELD {rid} for {trip_state} trip")

    # I5 (and each service's own conservation rules): inventory and credit counters add up.
    for name, engine in participant_engines.items():
        check = CONSERVATION.get(name)
        if check is not None:
            problems.extend(f"I5 {name}: {p}" for p in await check(engine))

    # I8: one driver per token, tokens in order, the last one the trip's.
    problems.extend(await lease_problems(coordinator_engine))

    # I6: every captured amount is a confirmed trip's total.
    captured: dict[str, int] = defaultdict(int)
    for part in held.get("payment", {}).values():
        if part.status == "CONFIRMED":
            captured[part.trip_id] += part.price_minor
    for trip_id in captured:
        state = trips[trip_id].state if trip_id in trips else MISSING
        if state != "CONFIRMED":
            problems.append(f"I6: money captured for trip {trip_id} which is {state}")

    return AuditReport(
        violations=problems,
        trips_by_state=dict(Counter(t.state for t in trips.values())),
        holds={name: dict(Counter(r.status for r in rows.values())) for name, rows in held.items()},
        orphans=orphans,
    )


async def lease_problems(engine: AsyncEngine) -> list[str]:
    """I8 from the step log alone: lease grants, the trips' tokens and the steps' writers agree."""
    async with engine.connect() as conn:
        trip_rows = (await conn.execute(text("SELECT trip_id, state, owner, fence, lease_expires_at FROM trips"))).all()
        grant_rows = (await conn.execute(text("SELECT trip_id, fence, owner FROM trip_leases"))).all()
        step_rows = (await conn.execute(text("SELECT trip_id, name, fence, owner FROM steps"))).all()
    grants: dict[str, dict[int, str]] = defaultdict(dict)
    for g in grant_rows:
        grants[g.trip_id][g.fence] = g.owner  # (trip, fence) is the key: one holder per token
    problems = []
    for t in trip_rows:
        tokens = sorted(grants.get(t.trip_id, {}))
        if tokens != list(range(1, len(tokens) + 1)):
            problems.append(f"I8: trip {t.trip_id} has lease tokens {tokens}, not 1..n")
        if tokens and (t.fence != tokens[-1] or t.owner != grants[t.trip_id][tokens[-1]]):
            problems.append(f"I8: trip {t.trip_id} is held by {t.owner} under token {t.fence}, not its last grant")
        if t.state in TERMINAL and t.lease_expires_at is not None:
            problems.append(f"I8: {t.state} trip {t.trip_id} still has a lease")
    fences = {t.trip_id: t.fence for t in trip_rows}
    for step in step_rows:
        holder = grants.get(step.trip_id, {}).get(step.fence)
        if step.fence > fences.get(step.trip_id, 0):
            problems.append(f"I8: step {step.trip_id}/{step.name} carries token {step.fence}, never granted yet")
        elif holder is not None and holder != step.owner:
            problems.append(
                f"I8: step {step.trip_id}/{step.name} written by {step.owner} under token {step.fence} held by {holder}"
            )
    return problems


def _confirmed_problems(trip: _Trip, parts: Mapping[str, Reservation | None]) -> list[str]:
    """I2: every reservation confirmed, the payment captured for exactly the total."""
    problems = []
    for name in ("flight", "payment"):
        if name not in parts:
            continue  # that participant's database was not given
        part = parts[name]
        if part is None or part.status != "CONFIRMED":
            found = part.status if part else MISSING
            problems.append(f"I2: confirmed trip {trip.trip_id} has {name} {found}")
    for name in OPTIONAL_PARTS:  # the trip may have none; if it has one, it is confirmed
        part = parts.get(name)
        if part is not None and part.status != "CONFIRMED":
            problems.append(f"I2: confirmed trip {trip.trip_id} has {name} {part.status}")
    total = sum(p.price_minor for n, p in parts.items() if p and n in PRICED_PARTS)
    pay = parts.get("payment")
    if pay is not None and pay.price_minor != total:
        problems.append(f"I2: trip {trip.trip_id} captured {pay.price_minor}, its total is {total}")
    return problems


# --- a local mesh's databases, read-only ---------------------------------------------------------


class AuditSourceError(Exception):
    """A database to audit is missing or cannot be opened."""


def readonly_url(data: str) -> str:
    """An async SQLAlchemy URL that opens a mesh database read-only.

    `data` is a SQLite file path or any SQLAlchemy URL. SQLite files (a path, or a sqlite URL) are
    opened with `mode=ro`, so the audit can never write, and a missing file is an error rather than a
    new empty database. A file nobody has open (no `-wal` or `-journal` next to it: the mesh is
    stopped) is opened `immutable` as well, so reading it leaves no `-wal`/`-shm` behind and works in
    a directory the auditor cannot write. Other URLs (PostgreSQL) are used as given: the audit only
    ever SELECTs.
    """
    if "://" not in data:
        path = Path(data)
    else:
        url = make_url(data)
        if url.get_backend_name() != "sqlite":
            return database_url(url).render_as_string(hide_password=False)  # postgresql:// -> asyncpg
        if not url.database or url.database == ":memory:":
            raise AuditSourceError(f"{data}: an in-memory database cannot be audited from outside")
        path = Path(url.database)
    if not path.is_file():
        raise AuditSourceError(f"no database at {path}")
    in_use = any(path.with_name(path.name + suffix).exists() for suffix in ("-wal", "-journal"))
    immutable = "" if in_use else "&immutable=1"
    return f"sqlite+aiosqlite:///file:{path.resolve()}?mode=ro{immutable}&uri=true"


@contextlib.asynccontextmanager
async def open_readonly(databases: Mapping[str, str]) -> AsyncIterator[dict[str, AsyncEngine]]:
    """Engines for {component: database (path or URL)}, read-only, disposed on the way out."""
    urls = {name: readonly_url(data) for name, data in databases.items()}
    engines = {name: create_async_engine(url, **_readonly_options(url)) for name, url in urls.items()}
    try:
        yield engines
    finally:
        for engine in engines.values():
            await engine.dispose()


def _readonly_options(url: str) -> dict[str, Any]:
    """PostgreSQL: every transaction of the audit's sessions is READ ONLY, so a bug cannot write."""
    if make_url(url).get_backend_name() == "postgresql":
        return {"connect_args": {"server_settings": {"default_transaction_read_only": "on"}}}
    return {}


async def audit_databases(databases: Mapping[str, str]) -> AuditReport:
    """Audit a mesh given where each component keeps its data: "coordinator" and the participants."""
    if "coordinator" not in databases:
        raise AuditSourceError("no coordinator database given")
    async with open_readonly(databases) as engines:
        participants = {name: engine for name, engine in engines.items() if name != "coordinator"}
        return await audit(engines["coordinator"], participants)
