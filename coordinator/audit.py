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
import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
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
LIVE_STATUSES = ("HELD", "CONFIRMED")
MISSING = "missing"


@dataclass(frozen=True)
class Reservation:
    reservation_id: str
    status: str
    price_minor: int
    refund: bool = False  # a payment reservation that pays money back (drawn on the trip's charges)

    @property
    def trip_id(self) -> str:
        """The coordinator names reservations "{trip_id}/{participant}" (revision r: "...{participant}.r")."""
        return self.reservation_id.rsplit("/", 1)[0]

    @property
    def revision(self) -> int:
        _, _, revision = self.reservation_id.rsplit("/", 1)[1].partition(".")
        return int(revision) if revision.isdigit() else 1


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
    operations: tuple[dict[str, Any], ...] = ()

    def live_revisions(self) -> dict[str, int | None]:
        """Which revision of each priced part the booked trip holds: 1 (the booking's) unless an applied
        change replaced it (its revision) or dropped it (None)."""
        live: dict[str, int | None] = dict.fromkeys(PRICED_PARTS, 1)
        for op in self.operations:
            if op.get("kind") == "CHANGE" and op.get("outcome") == "APPLIED":
                live.update(dict.fromkeys(op.get("dropped", ()), None))
                live.update(dict.fromkeys(op.get("parts", ()), int(op["revision"])))
        return live

    @property
    def fee_kept(self) -> int:
        """What a cancellation by the customer kept (the fare rules' fee); 0 for any other trip."""
        return sum(int(op.get("fee_minor", 0)) for op in self.operations if op.get("outcome") == "CANCELLED")


async def _trips(engine: AsyncEngine) -> dict[str, _Trip]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT trip_id, state, failure_reason, definition_version, operations FROM trips")
        )
        return {
            r.trip_id: _Trip(
                r.trip_id, r.state, r.failure_reason or "", r.definition_version, tuple(_json(r.operations) or ())
            )
            for r in rows
        }


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def _reservations(engine: AsyncEngine) -> dict[str, Reservation]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT reservation_id, status, price_minor, details FROM reservations"))
        return {
            r.reservation_id: Reservation(
                r.reservation_id, r.status, r.price_minor, bool((_json(r.details) or {}).get("refund_of"))
            )
            for r in rows
        }


def _orphan_state(participant: str, part: Reservation, trip: _Trip | None) -> str | None:
    """The trip state that makes this reservation an orphan, or None when its trip owns it."""
    if part.status not in LIVE_STATUSES:
        return None
    if trip is None:
        return MISSING
    if trip.state == "CANCELLED" and not (part.status == "CONFIRMED" and _settled_record(participant, trip)):
        return trip.state
    if trip.state == "CONFIRMED" and part.status == "HELD":
        return trip.state
    return None  # a trip in flight or in NEEDS_ATTENTION still owns what it holds


def _settled_record(participant: str, trip: _Trip) -> bool:
    """A trip its customer cancelled after booking keeps its confirmed payments (the charge and the refund,
    which I6 weighs) and the messages sent; only its priced parts must all be let go (I3)."""
    cancelled_by_customer = any(op.get("outcome") == "CANCELLED" for op in trip.operations)
    return cancelled_by_customer and participant not in PRICED_PARTS


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

    by_trip: dict[str, dict[str, list[Reservation]]] = defaultdict(lambda: defaultdict(list))
    for name, rows in held.items():
        for part in rows.values():
            by_trip[part.trip_id][name].append(part)
    for trip in trips.values():
        mine = by_trip.get(trip.trip_id, {})
        if trip.state == "CONFIRMED":
            problems.extend(_confirmed_problems(trip, mine, checked=held.keys()))
        elif trip.state == "CANCELLED":
            # I3: nothing held or confirmed; money is checked under I6, and the messages of a trip its
            # customer cancelled were sent (the booking's, then the cancellation's).
            checked = PRICED_PARTS if trip.operations else tuple(n for n in mine if n != "payment")
            for name in checked:
                for part in mine.get(name, []):
                    if part.status in LIVE_STATUSES:
                        problems.append(f"I3: cancelled trip {trip.trip_id} still has {name} {part.status}")

    # I4: nothing held that belongs to no live trip.
    orphans: list[Orphan] = []
    for name, rows in held.items():
        for rid, part in rows.items():
            trip_state = _orphan_state(name, part, trips.get(part.trip_id))
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

    # I6: the money a trip keeps (captured less refunded) is a confirmed trip's total, or a cancelled
    # trip's fee, and nothing for any other.
    for trip_id, kinds in by_trip.items():
        kept = _kept(kinds.get("payment", []))
        owner = trips.get(trip_id)
        if owner is not None and owner.state == "CANCELLED" and kept != owner.fee_kept:
            problems.append(f"I6: cancelled trip {trip_id} keeps {kept}, its fee is {owner.fee_kept}")
        elif kept and (owner is None or (owner.state == "NEEDS_ATTENTION" and not owner.operations)):
            # a booking parked while undoing never captured (the capture is its last step)
            problems.append(f"I6: money captured for trip {trip_id} which is {owner.state if owner else MISSING}")

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


def _kept(payments: list[Reservation]) -> int:
    """Captured less refunded, over a trip's payment reservations."""
    return sum(-p.price_minor if p.refund else p.price_minor for p in payments if p.status == "CONFIRMED")


def _confirmed_problems(trip: _Trip, parts: Mapping[str, list[Reservation]], checked: Collection[str]) -> list[str]:
    """I2: every booked part's reservation confirmed, every replaced one let go, and the money kept
    exactly the booked parts' total."""
    problems = []
    live = trip.live_revisions()
    total = 0
    for name in PRICED_PARTS:
        if name not in checked:
            continue  # that participant's database was not given
        revision = live[name]
        for part in parts.get(name, []):
            if part.revision == revision:
                total += part.price_minor
                if part.status != "CONFIRMED":
                    problems.append(f"I2: confirmed trip {trip.trip_id} has {name} {part.status}")
            elif part.status in LIVE_STATUSES:
                problems.append(f"I2: confirmed trip {trip.trip_id} still has replaced {name} {part.reservation_id}")
        if name == "flight" and revision is not None and not any(p.revision == revision for p in parts.get(name, [])):
            problems.append(f"I2: confirmed trip {trip.trip_id} has flight {MISSING}")
    if "payment" in checked:
        kept = _kept(parts.get("payment", []))
        if not parts.get("payment"):
            problems.append(f"I2: confirmed trip {trip.trip_id} has payment {MISSING}")
        elif kept != total:
            problems.append(f"I2: trip {trip.trip_id} captured {kept}, its total is {total}")
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
