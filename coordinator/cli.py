"""The `tripmesh` command: run the whole mesh locally, book a trip, read trips.

    tripmesh up [--json-logs] [--var-dir DIR]    start every process, print where they listen, Ctrl-C stops
    tripmesh up --tls                            the same with mutual TLS (certificates made if missing)
    tripmesh certs [--dir var/certs]             a local CA and a certificate per process (cli_security.py)
    tripmesh dashboard [--port 8080]             the dashboard alone, for a coordinator already running
    tripmesh book --customer cust-ada ...        BookTrip, then the outcome and its step table
    tripmesh change TRIP_ID --check-out ...      ChangeTrip: another flight, seats, stay, hotel or car (or drop one)
    tripmesh cancel TRIP_ID                      CancelTrip: release everything, refund less the fare rules' fee
    tripmesh trip TRIP_ID                        GetTrip: state, reservations, step timeline
    tripmesh trips [--state needs-attention]     ListTrips (trips waiting for an operator, with why)
    tripmesh retry TRIP_ID                       RetryTrip: send a NEEDS_ATTENTION trip on again
    tripmesh audit [--var-dir var]               check invariants I1-I6 on a mesh's databases (read-only)
    tripmesh migrate [--component C] [--url URL] upgrade the databases' schemas (Alembic) and seed them
    tripmesh demo [--trips 48] [--seed N]        a mixed, fault-injected run on a mesh of its own

Process management lives in coordinator/launcher.py, the audit in coordinator/audit.py, the demo's
scenarios in coordinator/demo.py, and all text in coordinator/cli_format.py.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc
from alembic.util import CommandError
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from coordinator import cli_format, cli_security, demo
from coordinator.audit import AuditSourceError, audit_databases
from coordinator.launcher import (
    DASHBOARD,
    SMTP_SINK,
    Launcher,
    LaunchError,
    MeshPlan,
    PlannedProcess,
    mesh_plan,
    metrics_off,
    port_in_use,
    start_mesh,
)
from services.kit.healthcheck import connect_address
from services.kit.migrate import KINDS, migrate_databases
from services.kit.tls import client_tls, sync_channel
from services.kit.tracing import otlp_endpoint
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

DEFAULT_ADDRESS = connect_address(
    f"{os.environ.get('TRIPMESH_COORDINATOR_HOST', 'localhost')}:{os.environ.get('TRIPMESH_COORDINATOR_PORT', '50050')}"
)
STARTUP_TIMEOUT = 30.0
PartT = TypeVar("PartT", trip_pb.TripFlight, trip_pb.TripHotel, trip_pb.TripCar)
STOP_GRACE = 10.0


class CliError(Exception):
    """A problem to report in one message; exit code 1 unless told otherwise."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- tripmesh up ------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    tls_dir = cli_security.prepare_up_tls(args)
    plan = mesh_plan(os.environ, var_dir=args.var_dir, json_logs=args.json_logs, dashboard=True)
    busy = [p for p in plan.processes if port_in_use(p.listen)]
    if busy:
        for p in busy:
            print(
                f"tripmesh: {p.listen} ({p.component.name}) is already in use: is a mesh already running? "
                f"Stop it, or set TRIPMESH_{p.component.prefix}_PORT.",
                file=sys.stderr,
            )
        return 1
    checked = _check_metrics_ports(plan)
    if checked is None:
        return 1
    plan = checked
    os.makedirs(os.path.join(args.var_dir, "mail"), exist_ok=True)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    launcher = Launcher()
    try:
        _start_mesh(launcher, plan, stop, timeout=args.startup_timeout)
        print(_up_banner(launcher, plan, tls_dir), flush=True)
        while not stop.wait(0.5):
            dead = launcher.exited()
            if dead:
                for child in dead:
                    print(f"tripmesh: {child.describe_exit()} unexpectedly; stopping the rest", file=sys.stderr)
                return 1
        print(f"tripmesh: {signal.Signals(received[0]).name} received; stopping the mesh", file=sys.stderr)
        return 0
    except LaunchError as error:
        print(f"tripmesh: {error}; stopping the rest", file=sys.stderr)
        return 1
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        codes = launcher.stop_all(grace=STOP_GRACE)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"tripmesh: stopped ({_exit_summary(codes)})", file=sys.stderr)


def _check_metrics_ports(plan: MeshPlan) -> MeshPlan | None:
    """A configured metrics port in use stops `up` (None); a default one only turns that /metrics off."""
    for process in list(plan.processes):
        if process.metrics is None or not port_in_use(process.metrics):
            continue
        variable = f"TRIPMESH_{process.component.prefix}_METRICS_PORT"
        if process.metrics_explicit:
            print(
                f"tripmesh: {process.metrics} ({process.component.name} metrics) is already in use; set {variable}.",
                file=sys.stderr,
            )
            return None
        print(
            f"tripmesh: {process.metrics} is in use; {process.component.name} runs without metrics "
            f"(set {variable} to another port, or 0 to say so)",
            file=sys.stderr,
        )
        plan = metrics_off(plan, next(p for p in plan.processes if p.component is process.component))
    return plan


def _start_mesh(launcher: Launcher, plan: MeshPlan, stop: threading.Event, *, timeout: float) -> None:
    def started(process: PlannedProcess, pid: int) -> None:
        print(f"tripmesh: started {process.component.name} (pid {pid}) on {process.listen}", file=sys.stderr)

    start_mesh(launcher, plan, timeout=timeout, cancel=stop, on_start=started)


def _up_banner(launcher: Launcher, plan: MeshPlan, tls_dir: str | None = None) -> str:
    pids = {c.name: c.pid for c in launcher.children}
    endpoints = [
        cli_format.Endpoint(p.component.name, p.address, p.data, pids[p.component.name])
        for p in sorted(plan.processes, key=lambda p: p.component.name != "coordinator")
    ]
    coordinator = next(p.address for p in plan.processes if p.component.name == "coordinator")
    metrics = [(p.component.name, f"http://{p.metrics}/metrics") for p in plan.processes if p.metrics]
    endpoint = otlp_endpoint(os.environ)
    tracing = f"OTLP to {endpoint}" if endpoint else "off (set OTEL_EXPORTER_OTLP_ENDPOINT to send spans)"
    dashboard = [f"dashboard: {p.data}  (open it in a browser)" for p in plan.processes if p.component is DASHBOARD]
    return "\n".join(
        [
            "",
            "tripmesh is up:",
            cli_format.format_endpoints(endpoints),
            "",
            "metrics (Prometheus):",
            *(f"  {name:<12} {url}" for name, url in metrics),
            f"tracing: {tracing}",
            "",
            *dashboard,
            *cli_security.transport_lines(tls_dir, _grpcurl(), coordinator),
            "or: tripmesh book --help   (Ctrl-C stops everything)",
            "",
        ]
    )


def _grpcurl() -> str:
    """'grpcurl' if it is on PATH, else the copy the dev extra puts next to this Python."""
    bundled = Path(sys.executable).parent / "grpcurl"
    if shutil.which("grpcurl") or not bundled.is_file():
        return "grpcurl"
    relative = os.path.relpath(bundled)
    return relative if not relative.startswith("..") else str(bundled)


def _exit_summary(codes: dict[str, int]) -> str:
    return ", ".join(f"{name} {code}" for name, code in codes.items()) or "nothing was running"


# --- tripmesh dashboard ------------------------------------------------------------------------------


def cmd_dashboard(args: argparse.Namespace) -> int:
    from coordinator.dashboard.server import DashboardSettings, serve  # aiohttp only when asked for
    from services.kit import logging as kit_logging

    settings = DashboardSettings.from_env()
    settings = DashboardSettings(
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        coordinator_address=args.coordinator or settings.coordinator_address,
    )
    if port_in_use(f"{settings.host}:{settings.port}"):
        raise CliError(f"tripmesh: {settings.host}:{settings.port} is already in use; try --port")
    kit_logging.configure("dashboard", fmt=os.environ.get("TRIPMESH_LOG_FORMAT", "console"))
    print(
        f"tripmesh dashboard: http://{connect_address(f'{settings.host}:{settings.port}')}/ "
        f"(coordinator {settings.coordinator_address}; Ctrl-C stops it)",
        flush=True,
    )
    serve(settings)
    return 0


# --- client commands ----------------------------------------------------------------------------------


def _call(address: str, rpc: Callable[[trip_grpc.TripCoordinatorStub], Any]) -> Any:
    with sync_channel(address, client_tls()) as channel:
        try:
            return rpc(trip_grpc.TripCoordinatorStub(channel))
        except grpc.RpcError as error:
            raise CliError(_describe_rpc_error(error, address)) from error


def _describe_rpc_error(error: Any, address: str) -> str:
    reason = ""
    violations: list[tuple[str, str]] = []
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
    text = cli_format.format_rpc_error(error.code().name, error.details() or "", reason=reason, violations=violations)
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        text += f"\n  is the mesh running at {address}? (make run) With TLS on, give --tls-dir or TRIPMESH_TLS_DIR."
    return text


def _date(text: str) -> common_pb.Date:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from error
    return common_pb.Date(year=day.year, month=day.month, day=day.day)


def _enum_name(names: Sequence[str], prefix: str, text: str) -> str:
    """'premium-economy' -> 'CABIN_PREMIUM_ECONOMY' if that is one of the enum's names."""
    name = prefix + text.upper().replace("-", "_")
    if name not in names or name.endswith("_UNSPECIFIED"):
        choices = ", ".join(n.removeprefix(prefix).lower() for n in names if not n.endswith("_UNSPECIFIED"))
        raise CliError(f"unknown {prefix.lower().rstrip('_').replace('_', ' ')} {text!r}; choose one of {choices}")
    return name


def _enum(enum: Any, prefix: str) -> Callable[[str], int]:
    return lambda text: int(enum.Value(_enum_name(enum.keys(), prefix, text)))


def _as_is(value: Any) -> Any:
    return value


# option -> (the part's field, how the option's text becomes its value); dates are parsed by argparse
FLIGHT_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "flight": ("outbound_flight_id", str),
    "return_flight": ("return_flight_id", str),
    "cabin": ("cabin", _enum(flight_pb.Cabin, "CABIN_")),
    "passengers": ("passenger_count", int),
}
HOTEL_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "hotel": ("hotel_id", str),
    "room": ("room_type", _enum(hotel_pb.RoomType, "ROOM_TYPE_")),
    "rooms": ("room_count", int),
    "check_in": ("check_in", _as_is),
    "check_out": ("check_out", _as_is),
}
CAR_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "car_city": ("city", str),
    "car_class": ("car_class", _enum(car_pb.CarClass, "CAR_CLASS_")),
    "pick_up": ("pick_up_date", _as_is),
    "drop_off": ("drop_off_date", _as_is),
}


def _part(args: argparse.Namespace, base: PartT, fields: dict[str, tuple[str, Callable[[Any], Any]]]) -> PartT:
    """A copy of `base` (the part as booked, or the defaults) with each option given set on it."""
    part = type(base)()
    part.CopyFrom(base)
    for option, (name, convert) in fields.items():
        value = getattr(args, option)
        if value is None:
            continue
        if isinstance(value, common_pb.Date):
            getattr(part, name).CopyFrom(value)
        else:
            setattr(part, name, convert(value))
    return part


def _flight_part(args: argparse.Namespace, base: trip_pb.TripFlight) -> trip_pb.TripFlight:
    part = _part(args, base, FLIGHT_FIELDS)
    if args.passengers is not None:
        del part.seats[:]  # named seats were for the party as it was
    if args.seats is not None:
        part.seats[:] = [seat.strip() for seat in args.seats.split(",") if seat.strip()]
    return part


FLIGHT_OPTIONS = (*FLIGHT_FIELDS, "seats")
HOTEL_OPTIONS = tuple(HOTEL_FIELDS)
CAR_OPTIONS = tuple(CAR_FIELDS)


def _given(args: argparse.Namespace, options: Sequence[str]) -> bool:
    return any(getattr(args, option) is not None for option in options)


def build_book_request(args: argparse.Namespace) -> trip_pb.BookTripRequest:
    request = trip_pb.BookTripRequest(
        trip_id=args.trip_id or f"trip-{uuid.uuid4().hex[:16]}",
        customer=trip_pb.Customer(customer_id=args.customer, email=args.email, name=args.name),
        flight=_flight_part(args, trip_pb.TripFlight(cabin=flight_pb.CABIN_ECONOMY, passenger_count=1)),
        payment_method_id=args.payment_method,
        currency_code=args.currency,
    )
    if args.hotel:
        missing = [
            flag for flag, value in (("--check-in", args.check_in), ("--check-out", args.check_out)) if not value
        ]
        if missing:
            raise CliError(f"--hotel needs {' and '.join(missing)}")
        request.hotel.CopyFrom(
            _part(args, trip_pb.TripHotel(room_type=hotel_pb.ROOM_TYPE_STANDARD, room_count=1), HOTEL_FIELDS)
        )
    if _given(args, CAR_OPTIONS):
        request.car.CopyFrom(_part(args, trip_pb.TripCar(car_class=car_pb.CAR_CLASS_COMPACT), CAR_FIELDS))
    return request


def build_change_request(args: argparse.Namespace, booked: trip_pb.BookTripRequest) -> trip_pb.ChangeTripRequest:
    """A ChangeTrip carries each part it changes whole: a part with any option given is the part as `booked`
    (the trip as it stands) with those options applied; a part with none stays as booked."""
    request = trip_pb.ChangeTripRequest(
        trip_id=args.trip_id,
        change_id=args.change_id or f"change-{uuid.uuid4().hex[:12]}",
        drop_hotel=args.drop_hotel,
        drop_car=args.drop_car,
    )
    if args.drop_hotel and _given(args, HOTEL_OPTIONS):
        raise CliError("--drop-hotel cannot go with hotel options (--hotel, --room, --rooms, --check-in, --check-out)")
    if args.drop_car and _given(args, CAR_OPTIONS):
        raise CliError("--drop-car cannot go with car options (--car-city, --car-class, --pick-up, --drop-off)")
    if _given(args, FLIGHT_OPTIONS):
        request.flight.CopyFrom(_flight_part(args, booked.flight))
    if _given(args, HOTEL_OPTIONS):
        base = booked.hotel if booked.HasField("hotel") else trip_pb.TripHotel(room_type=hotel_pb.ROOM_TYPE_STANDARD)
        request.hotel.CopyFrom(_part(args, base, HOTEL_FIELDS))
    if _given(args, CAR_OPTIONS):
        base_car = booked.car if booked.HasField("car") else trip_pb.TripCar(car_class=car_pb.CAR_CLASS_COMPACT)
        request.car.CopyFrom(_part(args, base_car, CAR_FIELDS))
    if not (_given(args, (*FLIGHT_OPTIONS, *HOTEL_OPTIONS, *CAR_OPTIONS)) or args.drop_hotel or args.drop_car):
        raise CliError("nothing to change: give flight, hotel or car options, or --drop-hotel or --drop-car")
    return request


def cmd_book(args: argparse.Namespace) -> int:
    request = build_book_request(args)
    print(f"booking trip {request.trip_id} ...", file=sys.stderr)
    response = _call(args.address, lambda stub: stub.BookTrip(request, timeout=args.timeout))
    trip = response.trip
    print(cli_format.format_trip(trip))
    return 0


def cmd_change(args: argparse.Namespace) -> int:
    """ChangeTrip; exit 1 when the change was refused or could not be had (REVERTED: the trip stands as it was)."""
    lookup = trip_pb.GetTripRequest(trip_id=args.trip_id)
    booked = _call(args.address, lambda stub: stub.GetTrip(lookup, timeout=args.timeout)).trip.booked
    request = build_change_request(args, booked)
    print(f"changing trip {request.trip_id} (change id {request.change_id}) ...", file=sys.stderr)
    response = _call(args.address, lambda stub: stub.ChangeTrip(request, timeout=args.timeout))
    print(cli_format.format_change(response.trip, response.change))
    return 1 if response.change.outcome == trip_pb.TRIP_CHANGE_OUTCOME_REVERTED else 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """CancelTrip; exit 1 when the cancellation is parked in NEEDS_ATTENTION."""
    request = trip_pb.CancelTripRequest(trip_id=args.trip_id)
    print(f"cancelling trip {args.trip_id} ...", file=sys.stderr)
    response = _call(args.address, lambda stub: stub.CancelTrip(request, timeout=args.timeout))
    trip: trip_pb.Trip = response.trip
    print(cli_format.format_cancel(trip))
    return 1 if trip.state == common_pb.TRIP_STATE_NEEDS_ATTENTION else 0


def cmd_trip(args: argparse.Namespace) -> int:
    request = trip_pb.GetTripRequest(trip_id=args.trip_id)
    response = _call(args.address, lambda stub: stub.GetTrip(request, timeout=args.timeout))
    print(cli_format.format_trip(response.trip))
    return 0


def _list_trips(
    request: trip_pb.ListTripsRequest, timeout: float
) -> Callable[[trip_grpc.TripCoordinatorStub], trip_pb.ListTripsResponse]:
    return lambda stub: stub.ListTrips(request, timeout=timeout)


def cmd_trips(args: argparse.Namespace) -> int:
    state = common_pb.TripState.Value(
        _enum_name(common_pb.TripState.keys(), "TRIP_STATE_", args.state) if args.state else "TRIP_STATE_UNSPECIFIED"
    )
    trips: list[trip_pb.Trip] = []
    token = ""
    while len(trips) < args.limit:
        request = trip_pb.ListTripsRequest(
            state=state, customer_id=args.customer, page_size=min(500, args.limit - len(trips)), page_token=token
        )
        response: trip_pb.ListTripsResponse = _call(args.address, _list_trips(request, args.timeout))
        trips.extend(response.trips)
        token = response.next_page_token
        if not token:
            break
    print(cli_format.format_trips(trips[: args.limit]))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """RetryTrip; exit 1 when the trip is parked in NEEDS_ATTENTION again (its participant is still out)."""
    request = trip_pb.RetryTripRequest(trip_id=args.trip_id)
    print(f"retrying trip {args.trip_id} ...", file=sys.stderr)
    response = _call(args.address, lambda stub: stub.RetryTrip(request, timeout=args.timeout))
    trip: trip_pb.Trip = response.trip
    print(cli_format.format_retry("NEEDS_ATTENTION", trip))
    return 1 if trip.state == common_pb.TRIP_STATE_NEEDS_ATTENTION else 0


# --- tripmesh audit ---------------------------------------------------------------------------------


def _databases(var_dir: str) -> dict[str, str]:
    """Where each component of a local mesh keeps its data, as `tripmesh up --var-dir` would set it up
    (TRIPMESH_<C>_DATABASE_URL wins, as it does for the services)."""
    plan = mesh_plan(os.environ, var_dir=var_dir)
    ordered = sorted(plan.processes, key=lambda p: p.component.name != "coordinator")
    return {p.component.name: p.data for p in ordered if p.component is not SMTP_SINK}


def _describe_source(var_dir: str, databases: dict[str, str]) -> str:
    files = [Path(data) for data in databases.values() if "://" not in data]
    if len(files) == len(databases) and all(f.parent == Path(var_dir) for f in files):
        return f"{var_dir.rstrip('/')}/: {', '.join(f.name for f in files)}"
    shown = (
        data if "://" not in data else make_url(data).render_as_string(hide_password=True)
        for data in databases.values()
    )
    return ", ".join(shown)


def cmd_audit(args: argparse.Namespace) -> int:
    """Exit 0 when every invariant holds, 1 on any violation, 2 when the databases cannot be read."""
    databases = _databases(args.var_dir)
    try:
        report = asyncio.run(audit_databases(databases))
    except AuditSourceError as error:
        raise CliError(f"tripmesh audit: {error}; is {args.var_dir} a mesh's var dir? (--var-dir)", code=2) from error
    except SQLAlchemyError as error:
        raise CliError(f"tripmesh audit: cannot read the databases: {error}", code=2) from error
    print(cli_format.format_audit(report, _describe_source(args.var_dir, databases)))
    return 0 if report.ok else 1


# --- tripmesh migrate -------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    """Every database of the mesh (or --component's, or --url) to its head revision, seeded."""
    if args.url and not args.component:
        raise CliError("tripmesh migrate: --url needs --component (which kind of database it is)")
    databases = _databases(args.var_dir)
    if args.component:
        if args.component not in databases:
            raise CliError(f"tripmesh migrate: no component {args.component!r}; one of {', '.join(databases)}")
        databases = {args.component: args.url or databases[args.component]}
    try:
        done = asyncio.run(migrate_databases(databases, target=args.revision))
    except (SQLAlchemyError, OSError, CommandError) as error:
        raise CliError(f"tripmesh migrate: {error}") from error
    for result, url in done:
        what = f"{result.before or 'empty'} -> {result.after}"
        if not result.changed:
            what = f"at {result.after}, nothing to do"
        print(f"{result.component:<12} {what}   ({make_url(url).render_as_string(hide_password=True)})")
    return 0


# --- tripmesh demo ----------------------------------------------------------------------------------


class DemoPrinter:
    """Prints the demo as it goes (demo.DemoReporter): the report on stdout, a progress line on stderr
    when it is a terminal."""

    def __init__(self, *, progress: bool) -> None:
        self.show_progress = progress
        self.progress_shown = False

    def starting(self, setup: demo.DemoSetup) -> None:
        o = setup.options
        kept = "removed after a passing run" if setup.temporary else "kept"
        print(f"tripmesh demo: {o.trips} trips, {o.concurrency} at a time, seed {o.seed} (trip ids demo-{setup.run}-*)")
        print(f"var dir {setup.var_dir} ({kept})")
        print()
        print(f"faults injected (TRIPMESH_<SERVICE>_FAULTS, TRIPMESH_FAULT_SEED={o.seed}):")
        print(cli_format.format_faults(setup.faults))
        print(flush=True)

    def mesh_up(self, setup: demo.DemoSetup, launcher: Launcher, seconds: float) -> None:
        pids = {c.name: c.pid for c in launcher.children}
        endpoints = [
            cli_format.Endpoint(p.component.name, p.address, p.data, pids[p.component.name])
            for p in sorted(setup.plan.processes, key=lambda p: p.component.name != "coordinator")
        ]
        print(f"mesh up in {seconds:.1f} s (logs in {setup.log_dir}):")
        print(cli_format.format_endpoints(endpoints))
        print(flush=True)

    def progress(self, done: int, total: int) -> None:
        if self.show_progress:
            print(f"\rbooking: {done}/{total} trips terminal", end="", file=sys.stderr, flush=True)
            self.progress_shown = True

    def _clear_progress(self) -> None:
        if self.progress_shown:
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self.progress_shown = False

    def finished(self, setup: demo.DemoSetup, summary: demo.DemoSummary) -> None:
        self._clear_progress()
        print(f"{len(summary.results)} trips booked; all terminal after {summary.seconds:.1f} s")
        print()
        print(cli_format.format_demo_report(summary))
        print(flush=True)

    def keeping(self, setup: demo.DemoSetup, launcher: Launcher) -> None:
        address = setup.coordinator.address
        print(f"the mesh keeps running; try: tripmesh trips --address {address}   (Ctrl-C stops it)", flush=True)

    def stopped(self, setup: demo.DemoSetup, codes: dict[str, int], removed: bool) -> None:
        self._clear_progress()
        print(f"mesh stopped ({_exit_summary(codes)})")
        if removed:
            print(f"var dir {setup.var_dir} removed (give --var-dir to keep one)")
        else:
            print(f"var dir kept: {setup.var_dir}   (tripmesh audit --var-dir {setup.var_dir})")

    def failed(self, message: str) -> None:
        self._clear_progress()
        print(f"tripmesh demo: {message}", file=sys.stderr, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    options = demo.DemoOptions(
        trips=args.trips,
        seed=args.seed,
        concurrency=args.concurrency,
        var_dir=args.var_dir,
        keep_running=args.keep_running,
        timeout=args.timeout,
        startup_timeout=args.startup_timeout,
        stop_grace=STOP_GRACE,
    )
    runner = demo.DemoRun(demo.prepare(options), DemoPrinter(progress=sys.stderr.isatty()))

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        runner.stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- argument parsing -----------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"coordinator address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds (default 30)")
    cli_security.add_client_tls_option(parser)


def _part_options(parser: argparse.ArgumentParser, *, booking: bool) -> None:
    """The flight, hotel and car options of `book` (with its defaults) and `change` (unset: as booked)."""

    def default(text: str) -> str:
        return f" (default {text})" if booking else ""

    parser.add_argument("--flight", required=booking, default=None, help="outbound flight id, e.g. TM101-20270315")
    parser.add_argument("--return", dest="return_flight", default=None, help="return flight id, e.g. TM102-20270322")
    parser.add_argument("--cabin", default=None, help="economy, premium-economy or business" + default("economy"))
    parser.add_argument("--passengers", type=_positive, default=None, help="passenger count" + default("1"))
    parser.add_argument("--seats", default=None, help="one named seat per passenger, held on every flight: 14A,14C")
    parser.add_argument("--hotel", default=None, help="hotel id, e.g. lis-alfama" + (" (optional)" if booking else ""))
    parser.add_argument("--room", default=None, help="standard, deluxe or suite" + default("standard"))
    parser.add_argument("--rooms", type=_positive, default=None, help="room count" + default("1"))
    parser.add_argument("--check-in", type=_date, default=None, help="YYYY-MM-DD")
    parser.add_argument("--check-out", type=_date, default=None, help="YYYY-MM-DD")
    parser.add_argument("--car-city", default=None, help="rent a car in this city, e.g. Lisbon")
    parser.add_argument(
        "--car-class", default=None, help="economy, compact, midsize, suv or luxury" + default("compact")
    )
    parser.add_argument("--pick-up", type=_date, default=None, help="the car's first day, YYYY-MM-DD")
    parser.add_argument("--drop-off", type=_date, default=None, help="the day the car is returned, YYYY-MM-DD")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tripmesh", description="Run the tripmesh mesh and book trips through it.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up", help="start the SMTP sink, every service, the coordinator and the dashboard; Ctrl-C stops them"
    )
    up.add_argument("--json-logs", action="store_true", help="children log JSON lines instead of console text")
    up.add_argument(
        "--var-dir",
        default=os.environ.get("TRIPMESH_VAR_DIR", "var"),
        help="databases and mail go here (default $TRIPMESH_VAR_DIR or var)",
    )
    up.add_argument("--startup-timeout", type=float, default=STARTUP_TIMEOUT, help="seconds per tier (default 30)")
    cli_security.add_up_tls_option(up)
    up.set_defaults(handler=cmd_up)
    cli_security.add_certs_command(commands)

    dash = commands.add_parser(
        "dashboard",
        help="serve the dashboard in the browser for a running coordinator (tripmesh up starts one too)",
        description="Serves the trip dashboard over HTTP: trips by state with live counts, each trip's saga "
        "as a live timeline, Retry for a trip in NEEDS_ATTENTION. It talks to the coordinator only through "
        "its public gRPC API. Ctrl-C stops it.",
    )
    dash.add_argument(
        "--host", default=None, help="listen on this host (default $TRIPMESH_DASHBOARD_HOST or 127.0.0.1)"
    )
    dash.add_argument(
        "--port", type=int, default=None, help="listen on this port (default $TRIPMESH_DASHBOARD_PORT or 8080)"
    )
    dash.add_argument(
        "--coordinator",
        default=None,
        help="the coordinator's address (default $TRIPMESH_DASHBOARD_COORDINATOR_ADDRESS or 127.0.0.1:50050)",
    )
    dash.set_defaults(handler=cmd_dashboard)

    book = commands.add_parser("book", help="book a trip (BookTrip) and print its outcome and steps")
    book.add_argument("--trip-id", default="", help="the idempotency key (default: a new trip-<uuid>)")
    book.add_argument("--customer", required=True, help="customer id, e.g. cust-ada")
    book.add_argument("--email", required=True, help="where the confirmation goes")
    book.add_argument("--name", default="", help="the customer's name")
    _part_options(book, booking=True)
    book.add_argument("--payment-method", required=True, help="payment method id, e.g. pm_ada_visa")
    book.add_argument("--currency", default="EUR", help="currency code (default EUR)")
    _client_options(book)
    book.set_defaults(handler=cmd_book)

    change = commands.add_parser(
        "change",
        help="change a CONFIRMED trip (ChangeTrip) and print the outcome; exit 1 if the change is refused",
        description="Each option replaces that field of the trip as it stands (GetTrip's booked); a part with "
        "no option given stays as booked. The change is its own saga: the new parts are reserved while the "
        "booked ones still hold, and if one cannot be had the change is REVERTED and the trip stays exactly "
        "as it was (exit 1). --change-id is the idempotency key: send the same command again to follow it.",
    )
    change.add_argument("trip_id")
    change.add_argument("--change-id", default="", help="the change's idempotency key (default: a new change-<uuid>)")
    _part_options(change, booking=False)
    change.add_argument("--drop-hotel", action="store_true", help="give up the hotel")
    change.add_argument("--drop-car", action="store_true", help="give up the car")
    _client_options(change)
    change.set_defaults(handler=cmd_change)

    cancel = commands.add_parser(
        "cancel",
        help="cancel a CONFIRMED trip (CancelTrip): every part released, the payment refunded less the fare "
        "rules' fee; prints the trip",
    )
    cancel.add_argument("trip_id")
    _client_options(cancel)
    cancel.set_defaults(handler=cmd_cancel)

    trip = commands.add_parser("trip", help="show one trip (GetTrip) with its step timeline")
    trip.add_argument("trip_id")
    _client_options(trip)
    trip.set_defaults(handler=cmd_trip)

    trips = commands.add_parser("trips", help="list trips (ListTrips), newest first")
    trips.add_argument(
        "--state", default="", help="only trips in this state: confirmed, cancelled, needs-attention, reserving, ..."
    )
    trips.add_argument("--customer", default="", help="only this customer's trips")
    trips.add_argument("--limit", type=_positive, default=20, help="at most this many (default 20)")
    _client_options(trips)
    trips.set_defaults(handler=cmd_trips)

    retry = commands.add_parser(
        "retry", help="send a trip parked in NEEDS_ATTENTION on again (RetryTrip) and print its outcome"
    )
    retry.add_argument("trip_id")
    _client_options(retry)
    retry.set_defaults(handler=cmd_retry)

    audit = commands.add_parser(
        "audit",
        help="check invariants I1-I6 on a local mesh's databases, read-only (exit 1 on any violation)",
        description="Reads the step log and every participant's database directly (SQLite files opened "
        "read-only) and checks invariants I1-I6 of ARCHITECTURE.md: counts trips by state and "
        "reservations by status, lists orphaned holds, exits 1 on any violation (2 if it cannot read). "
        "Exact on a quiet mesh: a trip still in flight counts as a violation of I1.",
    )
    audit.add_argument(
        "--var-dir", default=_default_var_dir(), help="the mesh's var dir (default $TRIPMESH_VAR_DIR or var)"
    )
    audit.set_defaults(handler=cmd_audit)

    migrate = commands.add_parser(
        "migrate",
        help="upgrade every database's schema to this version's head revision (Alembic) and seed it",
        description="Each database is found as `tripmesh up` finds it (TRIPMESH_<C>_DATABASE_URL, else "
        "<var-dir>/<component>.db); a PostgreSQL database that does not exist is created. Services do "
        "the same on start unless TRIPMESH_<C>_MIGRATE=off. Running it again changes nothing.",
    )
    migrate.add_argument("--component", choices=list(KINDS), help="only this database")
    migrate.add_argument("--url", default="", help="the database's SQLAlchemy URL (with --component)")
    migrate.add_argument("--revision", default="head", help="upgrade to this revision (default head)")
    migrate.add_argument(
        "--var-dir", default=_default_var_dir(), help="the mesh's var dir (default $TRIPMESH_VAR_DIR or var)"
    )
    migrate.set_defaults(handler=cmd_migrate)

    demo_cmd = commands.add_parser(
        "demo",
        help="start a mesh of its own with faults injected, book a mixed day of trips, print what happened",
        description="Starts the whole mesh (free ports, a fresh temporary var dir) with fault rules in its "
        "environment, books a seeded mix of trips that takes every compensation path (sold out, card "
        "declined, insufficient funds, a hold expired after the commit decision) under random transient "
        "faults, waits until each is terminal, prints the outcome per scenario and audits every "
        "database. Exit 0 when every trip ended as expected with no orphaned hold and no violation.",
    )
    demo_cmd.add_argument("--trips", type=_positive, default=demo.DEFAULT_TRIPS, help="how many (default 48)")
    demo_cmd.add_argument(
        "--seed", type=int, default=demo.DEFAULT_SEED, help="the mix, itineraries and faults (default 2027)"
    )
    demo_cmd.add_argument(
        "--concurrency", type=_positive, default=demo.DEFAULT_CONCURRENCY, help="bookings at once (default 8)"
    )
    demo_cmd.add_argument("--var-dir", default=None, help="use (and keep) this var dir instead of a temporary one")
    demo_cmd.add_argument(
        "--keep-running", action="store_true", help="leave the mesh up after the report, until Ctrl-C"
    )
    demo_cmd.add_argument(
        "--timeout", type=float, default=demo.DEFAULT_TIMEOUT, help="seconds for every trip to end (default 120)"
    )
    demo_cmd.add_argument("--startup-timeout", type=float, default=60.0, help="seconds per tier to start (default 60)")
    demo_cmd.set_defaults(handler=cmd_demo)
    return parser


def _default_var_dir() -> str:
    return os.environ.get("TRIPMESH_VAR_DIR", "var")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli_security.apply_client_tls(args)
    try:
        code: int = args.handler(args)
    except CliError as error:
        print(error, file=sys.stderr)
        return error.code
    return code


if __name__ == "__main__":
    sys.exit(main())
