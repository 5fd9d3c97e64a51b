"""Single components of the mesh as real processes, for the crash-point and chaos tests.

`ProcessMesh` gives every component a free port on 127.0.0.1 and its own SQLite file under a work
directory, starts any one of them alone (`python -m <module>` with only TRIPMESH_* variables it was
given, output in a log file), kills one with SIGKILL by its PID and starts it again on the same port
and database. `close()` stops every process it ever started, by PID (SIGTERM, then SIGKILL), whatever
the test did; use it as a context manager.

Also here: a BookTripRequest builder, read-only engines on every database, and the I7 checks that
read the effects themselves (the payment ledger, the notification outbox, the delivered e-mails).
"""

from __future__ import annotations

import contextlib
import email
import functools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.kit.healthcheck import grpc_serving, tcp_open
from tests.support.processes import REPO, free_ports
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

PARTICIPANTS = ("flight", "hotel", "payment", "notify")
WITH_CAR = (*PARTICIPANTS, "car")  # a mesh whose trips may rent a car (ProcessMesh(participants=WITH_CAR))
MODULES = {
    "smtp-sink": "services.notify.smtp_sink",
    "flight": "services.flight",
    "hotel": "services.hotel",
    "payment": "services.payment",
    "notify": "services.notify",
    "car": "services.car",
    "coordinator": "coordinator",
}
PREFIXES = {name: name.upper().replace("-", "_") for name in MODULES}
# The gRPC service each component's health check is asked about: "ready" means OUR process serves on the
# port, not just anything that answers health there.
SERVICES = {
    "flight": "tripmesh.v1.FlightService",
    "hotel": "tripmesh.v1.HotelService",
    "payment": "tripmesh.v1.PaymentService",
    "notify": "tripmesh.v1.NotificationService",
    "car": "tripmesh.v1.CarService",
    "coordinator": "tripmesh.v1.TripCoordinator",
}


def base_name(name: str) -> str:
    """A component's name without its replica suffix: "coordinator#2" -> "coordinator"."""
    return name.partition("#")[0]


TERMINAL = frozenset(
    {common_pb.TRIP_STATE_CONFIRMED, common_pb.TRIP_STATE_CANCELLED, common_pb.TRIP_STATE_NEEDS_ATTENTION}
)


SEED_VAR = "TRIPMESH_CHAOS_SEED"
# Lines the chaos tests want in the terminal summary (tests/chaos/conftest.py prints them).
REPORT: list[str] = []


@functools.cache
def chaos_seed() -> int:
    """TRIPMESH_CHAOS_SEED, or a fresh random seed for this session (printed in the report header)."""
    text = os.environ.get(SEED_VAR, "").strip()
    return int(text) if text else random.SystemRandom().randrange(2**32)


def crash_trip_id(kind: str, point: str, name: str) -> str:
    """The trip id of a crash-point case: its kind, the point and the step or state, as an id allows."""
    return f"crash-{kind}-{point}-{re.sub(r'[.@]', '-', name).lower()}"


def state_name(state: int) -> str:
    return common_pb.TripState.Name(state).removeprefix("TRIP_STATE_")  # type: ignore[arg-type]


# --- one process ----------------------------------------------------------------------------------


@dataclass
class Proc:
    """One started process: its Popen (so its PID is ours until we reap it), log file and address."""

    name: str
    popen: subprocess.Popen[bytes]
    address: str
    log_path: Path
    tcp: bool = False
    service: str = ""  # asked of the health check (empty: the server as a whole)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, exit {self.popen.returncode}); log tail:\n{self.log_tail()}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll the health service (the sink: a TCP connect) until it answers or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise AssertionError(f"{self.name} exited before it was ready: {self.describe()}")
            ready = (
                tcp_open(self.address, timeout=1.0)
                if self.tcp
                else grpc_serving(self.address, service=self.service, timeout=1.0)
            )
            if ready:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready after {timeout} s: {self.describe()}")
            time.sleep(0.02)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the process has exited (negative: the signal), None if still running."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> int:
        """SIGKILL by PID (a crash: no cleanup) and reap it; its exit code."""
        if self.running():
            self.popen.send_signal(signal.SIGKILL)  # Popen signals only a child it has not reaped
        code = self.wait_exit(10.0)
        assert code is not None, f"{self.name} (pid {self.pid}) survived SIGKILL"
        return code

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM by PID, up to `grace` seconds to exit, then SIGKILL."""
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
            if self.wait_exit(grace) is None:
                print(f"{self.name} (pid {self.pid}) ignored SIGTERM for {grace} s; SIGKILL", file=sys.stderr)
        return self.kill()


# --- the mesh, one process per component ------------------------------------------------------------


@dataclass
class ProcessMesh:
    """Every component on a free port with a SQLite file under `work_dir`; each started on demand.

    `env` maps a component to extra TRIPMESH_* settings it gets at every start (hold times, faults,
    retry budgets); `start(name, extra)` adds per-start ones (a crash point). More coordinator replicas
    are named "coordinator#2", "coordinator#3"...: each gets its own port, the settings of
    "coordinator" and then its own.
    """

    work_dir: Path
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    log_level: str = "info"
    participants: tuple[str, ...] = PARTICIPANTS  # started by start_participants, wired to the coordinator
    ports: dict[str, int] = field(init=False)
    procs: dict[str, Proc] = field(init=False, default_factory=dict)
    started: list[Proc] = field(init=False, default_factory=list)
    starts: Counter[str] = field(init=False, default_factory=Counter)
    closed: bool = field(init=False, default=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)  # a chaos thread starts some

    def __post_init__(self) -> None:
        self.ports = dict(zip(MODULES, free_ports(len(MODULES)), strict=True))
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)

    def address(self, name: str) -> str:
        if name not in self.ports:  # another replica: a free port none of ours holds
            self.ports[name] = next(p for p in free_ports(len(self.ports) + 1) if p not in self.ports.values())
        return f"127.0.0.1:{self.ports[name]}"

    def db_path(self, name: str) -> Path:
        return self.work_dir / f"{name}.db"

    @property
    def mail_dir(self) -> Path:
        return self.work_dir / "mail"

    def environment(self, name: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The inherited environment without a developer's TRIPMESH_*, plus this component's wiring."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPMESH_")}
        base = base_name(name)
        prefix = f"TRIPMESH_{PREFIXES[base]}"
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "TRIPMESH_VAR_DIR": str(self.work_dir),
                "TRIPMESH_LOG_LEVEL": self.log_level,
                f"{prefix}_HOST": "127.0.0.1",
                f"{prefix}_PORT": self.address(name).rpartition(":")[2],
            }
        )
        if name == "smtp-sink":
            env[f"{prefix}_DIR"] = str(self.mail_dir)
        else:
            env[f"{prefix}_DATABASE_URL"] = f"sqlite+aiosqlite:///{self.db_path(name)}"
        if name == "notify":
            env.update(
                {
                    "TRIPMESH_NOTIFY_SMTP_HOST": "127.0.0.1",
                    "TRIPMESH_NOTIFY_SMTP_PORT": str(self.ports["smtp-sink"]),
                    "TRIPMESH_NOTIFY_OUTBOX_INTERVAL_SECONDS": "0.1",
                    "TRIPMESH_NOTIFY_OUTBOX_MAX_BACKOFF_SECONDS": "1",
                }
            )
        if base == "coordinator":
            env.update({f"{prefix}_{p.upper()}_ADDRESS": self.address(p) for p in self.participants})
        env.update(self.env.get(base, {}))
        env.update(self.env.get(name, {}) if name != base else {})
        env.update(extra or {})
        return env

    def start(
        self, name: str, extra: Mapping[str, str] | None = None, *, wait: bool = True, timeout: float = 30.0
    ) -> Proc:
        log_path = self.work_dir / "logs" / f"{name}.log"
        with self._lock, log_path.open("ab") as log_file:
            assert not self.closed, f"{name} not started: the mesh is closed"
            current = self.procs.get(name)
            assert current is None or not current.running(), f"{name} is already running (pid {current.pid})"
            log_file.write(f"\n===== start #{self.starts[name] + 1} of {name}\n".encode())
            log_file.flush()
            popen = subprocess.Popen(
                [sys.executable, "-m", MODULES[base_name(name)]],
                cwd=REPO,
                env=self.environment(name, extra),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal reaches pytest, which stops it by PID
            )
            service = SERVICES.get(base_name(name), "")
            proc = Proc(name, popen, self.address(name), log_path, tcp=name == "smtp-sink", service=service)
            self.procs[name] = proc
            self.started.append(proc)
            self.starts[name] += 1
        if wait:
            proc.wait_ready(timeout)
        return proc

    def kill(self, name: str) -> int:
        return self.procs[name].kill()

    def restart(self, name: str, extra: Mapping[str, str] | None = None, *, timeout: float = 30.0) -> Proc:
        """SIGKILL (if running), then start again on the same port and database."""
        self.kill(name)
        return self.start(name, extra, timeout=timeout)

    def start_participants(self) -> None:
        """The SMTP sink and the participants, started together, then waited for."""
        for name in ("smtp-sink", *self.participants):
            self.start(name, wait=False)
        for name in ("smtp-sink", *self.participants):
            self.procs[name].wait_ready(60.0)

    def close(self) -> None:
        """Stop every process ever started here, by PID, the last started first; start no more."""
        with self._lock:
            self.closed = True
        for proc in reversed(self.started):
            proc.stop(grace=5.0)

    def __enter__(self) -> ProcessMesh:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextlib.asynccontextmanager
    async def databases(self) -> AsyncIterator[tuple[AsyncEngine, dict[str, AsyncEngine]]]:
        """Read-only engines on the coordinator's database and each participant's, disposed after."""
        coordinator = readonly_engine(self.db_path("coordinator"))
        participants = {name: readonly_engine(self.db_path(name)) for name in self.participants}
        try:
            yield coordinator, participants
        finally:
            for engine in (coordinator, *participants.values()):
                await engine.dispose()


def readonly_engine(path: Path) -> AsyncEngine:
    return create_async_engine(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")


# --- requests and answers ---------------------------------------------------------------------------


def trip_request(
    trip_id: str,
    *,
    customer_id: str = "cust-load",
    payment_method_id: str = "pm_load_visa",
    outbound: str = "TM101-20270315",
    inbound: str = "TM102-20270322",
    cabin: int = flight_pb.CABIN_ECONOMY,
    passengers: int = 1,
    hotel_id: str | None = "lis-alfama",
    room_type: int = hotel_pb.ROOM_TYPE_STANDARD,
    check_in: tuple[int, int, int] = (2027, 3, 15),
    check_out: tuple[int, int, int] = (2027, 3, 22),
    rooms: int = 1,
) -> trip_pb.BookTripRequest:
    request = trip_pb.BookTripRequest(
        trip_id=trip_id,
        customer=trip_pb.Customer(customer_id=customer_id, email=f"{customer_id}@example.com", name=customer_id),
        flight=trip_pb.TripFlight(
            outbound_flight_id=outbound, return_flight_id=inbound, cabin=cabin, passenger_count=passengers
        ),
        payment_method_id=payment_method_id,
        currency_code="EUR",
    )
    if hotel_id is not None:
        request.hotel.CopyFrom(
            trip_pb.TripHotel(
                hotel_id=hotel_id,
                room_type=room_type,
                check_in=common_pb.Date(year=check_in[0], month=check_in[1], day=check_in[2]),
                check_out=common_pb.Date(year=check_out[0], month=check_out[1], day=check_out[2]),
                room_count=rooms,
            )
        )
    return request


def get_trip(stub: trip_grpc.TripCoordinatorStub, trip_id: str, timeout: float = 5.0) -> trip_pb.Trip:
    return stub.GetTrip(trip_pb.GetTripRequest(trip_id=trip_id), timeout=timeout).trip


def wait_terminal(stub: trip_grpc.TripCoordinatorStub, trip_id: str, timeout: float) -> trip_pb.Trip:
    """Poll GetTrip until the trip is terminal; AssertionError with its last known state at the deadline."""
    deadline = time.monotonic() + timeout
    last: trip_pb.Trip | str = "never read"
    while time.monotonic() < deadline:
        try:
            trip = get_trip(stub, trip_id)
        except grpc.RpcError as error:
            last = f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
        else:
            if trip.state in TERMINAL:
                return trip
            last = trip
        time.sleep(0.05)
    raise AssertionError(f"trip {trip_id} not terminal after {timeout} s; last read: {last}")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate()` every 50 ms until it is true; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        time.sleep(0.05)


# --- effects, read from the databases and the mail directory (I7) ------------------------------------


async def reservation_rows(engine: AsyncEngine) -> dict[str, str]:
    """reservation_id -> status, straight from a participant's reservations table."""
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT reservation_id, status FROM reservations"))
        return {r.reservation_id: r.status for r in rows}


async def ledger_counts(engine: AsyncEngine) -> dict[str, Counter[str]]:
    """reservation_id -> how many ledger rows of each kind (AUTHORIZE, CAPTURE, VOID, REFUND, EXPIRE, and a
    refund's REFUND_HOLD, REFUND_RELEASE, REFUND_EXPIRE)."""
    counts: dict[str, Counter[str]] = {}
    async with engine.connect() as conn:
        for row in await conn.execute(text("SELECT reservation_id, kind FROM ledger")):
            counts.setdefault(row.reservation_id, Counter())[row.kind] += 1
    return counts


async def outbox_counts(engine: AsyncEngine) -> Counter[str]:
    """reservation_id -> outbox rows (queued e-mails) for it."""
    async with engine.connect() as conn:
        return Counter(r.reservation_id for r in await conn.execute(text("SELECT reservation_id FROM outbox")))


def ledger_problems(ledger: Mapping[str, Counter[str]]) -> list[str]:
    """I7 for money: each movement at most once per reservation, never both captured and voided, and a
    refund paid out only from a capture (a charge cancelled) or from a refund set aside (REFUND_HOLD)."""
    problems = []
    for rid, kinds in sorted(ledger.items()):
        problems.extend(f"I7: payment {rid} has {n} {kind} ledger rows" for kind, n in kinds.items() if n > 1)
        if kinds["CAPTURE"] and kinds["VOID"]:
            problems.append(f"I7: payment {rid} was both captured and voided: {dict(kinds)}")
        if kinds["REFUND"] and not (kinds["CAPTURE"] or kinds["REFUND_HOLD"]):
            problems.append(f"I7: payment {rid} was refunded without a capture: {dict(kinds)}")
        if kinds["REFUND_HOLD"] and kinds["AUTHORIZE"]:
            problems.append(f"I7: payment {rid} is both a charge and a refund: {dict(kinds)}")
        if kinds["REFUND"] and (kinds["REFUND_RELEASE"] or kinds["REFUND_EXPIRE"]):
            problems.append(f"I7: refund {rid} was both paid out and released: {dict(kinds)}")
    return problems


def mail_ids_by_trip(directory: Path) -> dict[str, list[str]]:
    """The Message-ID of every delivered e-mail, by the trip its subject names ('Your trip <id> is booked').

    Delivery is at least once (the outbox sends, then marks SENT): a notify process killed in between
    sends again after its restart, under the same Message-ID, derived from the reservation id.
    """
    found: dict[str, list[str]] = {}
    for path in directory.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes())
        words = str(message["Subject"] or "").split()
        if len(words) >= 3 and words[:2] == ["Your", "trip"]:
            found.setdefault(words[2], []).append(str(message["Message-ID"]))
    return found


def mails_by_trip(directory: Path) -> Counter[str]:
    """How many e-mails were delivered about each trip."""
    return Counter({trip_id: len(ids) for trip_id, ids in mail_ids_by_trip(directory).items()})


@contextlib.contextmanager
def coordinator_stub(address: str) -> Iterator[trip_grpc.TripCoordinatorStub]:
    with grpc.insecure_channel(address) as channel:
        yield trip_grpc.TripCoordinatorStub(channel)


def mail_ids_by_subject(directory: Path) -> dict[str, list[str]]:
    """The Message-ID of every delivered e-mail, by its subject ('Your trip <id> is booked', '... is changed',
    '... is cancelled'): one Message-ID per subject however often it was resent."""
    found: dict[str, list[str]] = {}
    for path in directory.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes())
        found.setdefault(str(message["Subject"] or ""), []).append(str(message["Message-ID"]))
    return found


# --- what a trip holds, across its revisions ----------------------------------------------------------

HOLDING_PARTS = ("flight", "hotel", "car")  # the parts a change replaces: seats, rooms, cars


def part_of(reservation_id: str) -> tuple[str, str]:
    """'t-1/flight.2' -> ('t-1', 'flight'): the trip and the part, whatever the revision."""
    trip_id, _, name = reservation_id.rpartition("/")
    return trip_id, name.partition(".")[0]


async def holding_problems(participants: Mapping[str, AsyncEngine], trip_states: Mapping[str, str]) -> list[str]:
    """A trip that is done holds at most one CONFIRMED reservation per part across its revisions ({trip}/flight,
    {trip}/flight.2, ...), so a changed trip never keeps both the old and the new seat, room or car; its seats
    (the flight's seat_assignments rows) belong to that one reservation; a CANCELLED trip holds nothing."""
    problems: list[str] = []
    live: dict[tuple[str, str], list[str]] = {}
    for name in HOLDING_PARTS:
        if name not in participants:
            continue
        for rid, status in (await reservation_rows(participants[name])).items():
            trip_id, part = part_of(rid)
            if (
                part == name
                and status in ("HELD", "CONFIRMED")
                and trip_states.get(trip_id) in ("CONFIRMED", "CANCELLED")
            ):
                live.setdefault((trip_id, part), []).append(f"{rid} {status}")
    for (trip_id, part), held in sorted(live.items()):
        if trip_states[trip_id] == "CANCELLED":
            problems.append(f"cancelled trip {trip_id} still holds {part}: {held}")
        elif len(held) > 1:
            problems.append(f"trip {trip_id} holds more than one {part}: {held}")
    async with participants["flight"].connect() as conn:
        seats = (await conn.execute(text("SELECT flight_id, seat, reservation_id FROM seat_assignments"))).all()
    holders: dict[str, set[str]] = {}
    for row in seats:
        holders.setdefault(part_of(row.reservation_id)[0], set()).add(row.reservation_id)
    for trip_id, rids in sorted(holders.items()):
        state = trip_states.get(trip_id)
        if state == "CANCELLED" or (state == "CONFIRMED" and len(rids) > 1):
            problems.append(f"{state} trip {trip_id} has seats under {sorted(rids)}")
    return problems
