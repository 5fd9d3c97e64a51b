"""docker-compose.yml, checked without Docker: its shape, then its very commands run as local processes.

No Docker engine is needed. The file is parsed with PyYAML and checked (images, commands, health
checks, start order by health, one database per service, two coordinator replicas on one step log,
published ports). Then every tripmesh service's `command` and `environment` run as local processes
through coordinator/launcher.py, translated the way Docker's network would resolve them: a service
name becomes 127.0.0.1 and each port a free port. The two services that are other people's images
stand in as what this machine has: `postgres` is the machine's PostgreSQL (each compose database gets
a uniquely named one, dropped afterwards) and `mail` (Mailpit) is tripmesh's own SMTP sink on the
port Mailpit would listen on. `migrate` runs to completion first, then each level of depends_on once
the previous one is healthy; every compose healthcheck command must then pass, and trips booked
through each replica must end CONFIRMED, mailed, leased to the replica that took them, and visible on
the dashboard.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from sqlalchemy import create_engine, text

from coordinator.launcher import Launcher, LaunchError
from services.kit.healthcheck import grpc_serving, tcp_open
from tests.support.databases import run_sync
from tests.support.processes import free_ports as worker_free_ports
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
PARTICIPANTS = ("flight", "hotel", "payment", "notify", "car")
REPLICAS = ("coordinator-1", "coordinator-2")
TRIPMESH = {"migrate", *PARTICIPANTS, *REPLICAS, "dashboard"}
EXTERNAL = {"postgres", "mail"}  # images not built from this repository
COMPONENTS = (*PARTICIPANTS, "coordinator")
RESERVED_PORTS = {1025, 2525, 8025, 8080, *range(50050, 50057)}
HEALTHCHECK = ["CMD", "python", "-m", "services.kit.healthcheck"]
LOCAL_POSTGRES = os.environ.get("TRIPMESH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whether written as a mapping or as KEY=VALUE lines."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def start_levels(services: Mapping[str, Any]) -> list[list[str]]:
    """Services grouped by how deep they sit in depends_on: each level needs only earlier ones."""
    level: dict[str, int] = {}

    def depth(name: str, seen: tuple[str, ...] = ()) -> int:
        assert name not in seen, f"depends_on cycle: {' -> '.join((*seen, name))}"
        if name not in level:
            level[name] = 1 + max((depth(dep, (*seen, name)) for dep in depends_on(services[name])), default=-1)
        return level[name]

    for name in services:
        depth(name)
    return [sorted(n for n in services if level[n] == i) for i in range(max(level.values()) + 1)]


def database_name(url: str) -> str:
    match = re.fullmatch(r"postgresql://postgres:[^@]+@postgres:5432/(\w+)", url)
    assert match, f"not a database on the compose PostgreSQL: {url}"
    return match.group(1)


# --- the file's shape ---------------------------------------------------------------------------------


def test_compose_declares_the_whole_mesh_from_one_image() -> None:
    services = load_compose()["services"]
    assert set(services) == TRIPMESH | EXTERNAL
    for name in TRIPMESH:
        service = services[name]
        command = service.get("command")
        assert isinstance(command, list) and command[:2] == ["python", "-m"], name
        assert service.get("build") == "." and service.get("image") == "tripmesh:dev", f"{name} must use the one image"
        assert environment(service).get("TRIPMESH_VAR_DIR") == "/data", name
        if name != "migrate":
            test = service.get("healthcheck", {}).get("test")
            assert isinstance(test, list) and test[:4] == HEALTHCHECK, f"{name}: healthcheck {test}"
    assert services["migrate"]["command"] == ["python", "-m", "coordinator.cli", "migrate"]
    assert services["migrate"]["restart"] == "no", "a one-shot job must not be restarted after it exits 0"
    for name in PARTICIPANTS:
        assert services[name]["command"][2:] == [f"services.{name}"]
    for name in REPLICAS:
        assert services[name]["command"][2:] == ["coordinator"]
    assert services["dashboard"]["command"][2:] == ["coordinator.dashboard"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert services["mail"]["image"].startswith("axllent/mailpit")
    assert services["mail"]["healthcheck"]["test"] == ["CMD", "/mailpit", "readyz"]


def test_compose_starts_each_service_once_what_it_needs_is_ready() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        for dep, condition in depends_on(service).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if dep == "migrate" else "service_healthy"
            assert condition == expected, f"{name} -> {dep}: {condition}"
    assert set(depends_on(services["migrate"])) == {"postgres"}
    assert set(depends_on(services["notify"])) == {"migrate", "mail"}
    assert set(depends_on(services["coordinator-1"])) == set(PARTICIPANTS)
    assert set(depends_on(services["coordinator-2"])) == {*PARTICIPANTS, "coordinator-1"}
    assert start_levels(services) == [
        ["mail", "postgres"],
        ["migrate"],
        ["car", "flight", "hotel", "notify", "payment"],
        ["coordinator-1"],
        ["coordinator-2", "dashboard"],
    ]


def test_compose_gives_every_component_its_own_database_and_the_replicas_one_step_log() -> None:
    services = load_compose()["services"]
    for name in TRIPMESH - {"dashboard"}:
        env = environment(services[name])
        names = {c: database_name(env[f"TRIPMESH_{c.upper()}_DATABASE_URL"]) for c in COMPONENTS}
        assert names == {c: f"tripmesh_{c}" for c in COMPONENTS}, name
    replica_ids = {environment(services[r])["TRIPMESH_COORDINATOR_REPLICA_ID"] for r in REPLICAS}
    assert replica_ids == set(REPLICAS), "each replica needs its own name in the leases"
    assert services["postgres"]["volumes"] == ["postgres-data:/var/lib/postgresql/data"]
    assert set(load_compose()["volumes"]) == {"postgres-data"}


def test_compose_wires_the_replicas_to_every_participant_and_publishes_what_people_use() -> None:
    services = load_compose()["services"]
    for replica in REPLICAS:
        env = environment(services[replica])
        for port, name in enumerate(PARTICIPANTS, start=50051):  # flight 50051 ... car 50055
            assert env[f"TRIPMESH_COORDINATOR_{name.upper()}_ADDRESS"] == f"{name}:{port}"
    assert environment(services["notify"])["TRIPMESH_NOTIFY_SMTP_HOST"] == "mail"
    assert environment(services["notify"])["TRIPMESH_NOTIFY_SMTP_PORT"] == "1025"
    assert environment(services["dashboard"])["TRIPMESH_DASHBOARD_COORDINATOR_ADDRESS"] == "coordinator-1:50050"
    published = {name: [str(p) for p in s.get("ports", [])] for name, s in services.items() if s.get("ports")}
    assert published == {
        "coordinator-1": ["50050:50050"],
        "coordinator-2": ["50056:50056"],
        "mail": ["8025:8025"],
        "dashboard": ["8080:8080"],
    }
    for name in TRIPMESH - {"migrate"}:
        listen = {k: v for k, v in environment(services[name]).items() if k.endswith("_HOST") and "SMTP" not in k}
        assert set(listen.values()) == {"0.0.0.0"}, f"{name} must listen on every interface: {listen}"


def test_healthcheck_fails_where_nothing_listens() -> None:
    port = free_ports(1)[0]
    for extra in ([], ["--tcp"]):
        result = subprocess.run(
            [sys.executable, "-m", "services.kit.healthcheck", *extra, f"127.0.0.1:{port}", "--timeout", "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1, result
        assert f"127.0.0.1:{port}" in result.stderr


# --- the file's commands, run as local processes --------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Free ports from this test worker's own range (tests/support/processes.py); never a documented default."""
    return worker_free_ports(count, avoid=RESERVED_PORTS)


@dataclass
class Translation:
    """How Docker's view of the mesh maps onto this machine for one test run."""

    services: set[str]
    ports: dict[str, str]  # compose port -> free local port
    databases: dict[str, str]  # compose database -> this run's database on the local PostgreSQL
    root: Path

    def container_root(self, service: str) -> Path:
        return self.root / "containers" / service

    def value(self, service: str, value: str, *, is_port: bool = False, is_host: bool = False) -> str:
        url = re.fullmatch(r"postgresql://postgres:[^@]+@postgres:5432/(\w+)", value)
        if url:
            return f"{LOCAL_POSTGRES}/{self.databases[url.group(1)]}"
        if value == "0.0.0.0" or (is_host and value in self.services):  # a bare name is a host only where one goes
            return "127.0.0.1"
        match = re.fullmatch(r"([\w.-]+):(\d+)", value)
        if match and (match.group(1) in self.services or match.group(1) in ("127.0.0.1", "localhost")):
            return f"127.0.0.1:{self.ports[match.group(2)]}"
        if is_port:
            return self.ports[value]
        if value.startswith("/"):
            return str(self.container_root(service)) + value
        return value

    def env(self, service: str, env: Mapping[str, str]) -> dict[str, str]:
        return {
            key: self.value(service, value, is_port=key.endswith("_PORT"), is_host=key.endswith("_HOST"))
            for key, value in env.items()
        }


def translate(compose: Mapping[str, Any], root: Path) -> Translation:
    services = compose["services"]
    envs = [environment(s) for s in services.values()]
    compose_ports = sorted({v for env in envs for k, v in env.items() if k.endswith("_PORT")}, key=int)
    local_ports = map(str, free_ports(len(compose_ports)))
    run = secrets.token_hex(3)
    databases = {
        database_name(v): f"tm_compose_{run}_{database_name(v).removeprefix('tripmesh_')}"
        for env in envs
        for k, v in env.items()
        if k.endswith("_DATABASE_URL")
    }
    translation = Translation(set(services), dict(zip(compose_ports, local_ports, strict=True)), databases, root)
    for name in services:
        translation.container_root(name).mkdir(parents=True)
    return translation


@dataclass
class LocalMesh:
    compose: dict[str, Any]
    translation: Translation
    launcher: Launcher
    log_dir: Path

    def address(self, service: str) -> str:
        """Where the service listens: the address its healthcheck probes."""
        return self.translation.value(service, self.compose["services"][service]["healthcheck"]["test"][-1])

    def healthcheck_argv(self, service: str) -> list[str]:
        test = self.compose["services"][service]["healthcheck"]["test"]
        return [sys.executable, *(self.translation.value(service, arg) for arg in test[2:])]

    def database_url(self, component: str) -> str:
        return f"{LOCAL_POSTGRES}/{self.translation.databases[f'tripmesh_{component}']}"

    def mail_dir(self) -> Path:
        return self.translation.root / "mail"

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))


def _require_postgres() -> None:
    if not tcp_open("127.0.0.1:5432", timeout=2.0):
        message = f"no PostgreSQL at {LOCAL_POSTGRES}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}: CI must run the compose test", pytrace=False)
        pytest.skip(message)


def _drop_databases(names: list[str]) -> None:
    async def drop() -> None:
        import asyncpg

        admin = await asyncpg.connect(f"{LOCAL_POSTGRES}/postgres", timeout=5)
        try:
            for name in names:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    run_sync(drop())


def _start(mesh: LocalMesh, name: str) -> None:
    service = mesh.compose["services"][name]
    env = mesh.translation.env(name, environment(service))
    if name == "mail":  # Mailpit's stand-in: the SMTP sink, on the port Mailpit's SMTP listens on
        smtp = mesh.translation.ports["1025"]
        env = {"TRIPMESH_SMTP_SINK_PORT": smtp, "TRIPMESH_SMTP_SINK_DIR": str(mesh.mail_dir())}
        mesh.launcher.start(name, "services.notify.smtp_sink", env, probe=lambda: tcp_open(f"127.0.0.1:{smtp}"))
        return
    module = service["command"][2]
    address = mesh.address(name)
    tcp = "--tcp" in service["healthcheck"]["test"]
    probe = (lambda: tcp_open(address, timeout=1.0)) if tcp else (lambda: grpc_serving(address, timeout=1.0))
    mesh.launcher.start(name, module, env, probe=probe)


@pytest.fixture(scope="module")
def local_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    _require_postgres()
    root = tmp_path_factory.mktemp("compose")
    compose = load_compose()
    services = compose["services"]
    translation = translate(compose, root)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPMESH_")}
    launcher = Launcher(base_env=base_env, cwd=root, log_dir=root / "logs")
    mesh = LocalMesh(compose, translation, launcher, root / "logs")
    try:
        for level in start_levels(services):
            if level == ["migrate"]:
                migrate = services["migrate"]
                result = subprocess.run(
                    [sys.executable, *migrate["command"][1:]],
                    env={**base_env, **translation.env("migrate", environment(migrate))},
                    cwd=root,
                    capture_output=True,
                    text=True,
                    timeout=180,
                )
                assert result.returncode == 0, f"migrate: {result.stdout}\n{result.stderr}"
                continue
            started = [name for name in level if name != "postgres"]  # the machine's own server
            for name in started:
                _start(mesh, name)
            launcher.wait_healthy(*started, timeout=90)
        yield mesh
    except LaunchError as error:
        pytest.fail(f"{error}\n{mesh.logs()}")
    finally:
        launcher.stop_all(grace=10)
        _drop_databases(list(translation.databases.values()))


def test_every_compose_healthcheck_passes(local_mesh: LocalMesh) -> None:
    for name in TRIPMESH - {"migrate"}:
        argv = local_mesh.healthcheck_argv(name)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{name}: {argv} -> {result.stderr}\n{local_mesh.logs()}"


def lisbon_trip(trip_id: str, day: int) -> trip_pb.BookTripRequest:
    """Flight, hotel and a car (the fifth participant): every participant's database gets a reservation."""
    return trip_pb.BookTripRequest(
        trip_id=trip_id,
        customer=trip_pb.Customer(customer_id="cust-ada", email="ada@example.com", name="Ada"),
        flight=trip_pb.TripFlight(
            outbound_flight_id=f"TM101-202703{day:02d}", cabin=flight_pb.CABIN_ECONOMY, passenger_count=1
        ),
        hotel=trip_pb.TripHotel(
            hotel_id="lis-alfama",
            room_type=hotel_pb.ROOM_TYPE_STANDARD,
            check_in=common_pb.Date(year=2027, month=3, day=day),
            check_out=common_pb.Date(year=2027, month=3, day=day + 2),
            room_count=1,
        ),
        car=trip_pb.TripCar(
            city="Lisbon",
            car_class=car_pb.CAR_CLASS_COMPACT,
            pick_up_date=common_pb.Date(year=2027, month=3, day=day),
            drop_off_date=common_pb.Date(year=2027, month=3, day=day + 2),
        ),
        payment_method_id="pm_ada_visa",
        currency_code="EUR",
    )


def test_trips_booked_through_either_replica_are_confirmed_mailed_and_leased_to_it(local_mesh: LocalMesh) -> None:
    booked: dict[str, str] = {}
    for day, replica in enumerate(REPLICAS, start=15):
        trip_id = f"e2e-compose-{replica}-{uuid.uuid4().hex[:8]}"
        with grpc.insecure_channel(local_mesh.address(replica)) as channel:
            trip = trip_grpc.TripCoordinatorStub(channel).BookTrip(lisbon_trip(trip_id, day), timeout=60).trip
        assert trip.state == common_pb.TRIP_STATE_CONFIRMED, f"{trip}\n{local_mesh.logs()}"
        booked[trip_id] = replica

    # Either replica answers for any trip: they read one step log.
    with grpc.insecure_channel(local_mesh.address("coordinator-2")) as channel:
        stub = trip_grpc.TripCoordinatorStub(channel)
        for trip_id in booked:
            assert stub.GetTrip(trip_pb.GetTripRequest(trip_id=trip_id)).trip.state == common_pb.TRIP_STATE_CONFIRMED

    engine = create_engine(local_mesh.database_url("coordinator").replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            grants = conn.execute(text("SELECT trip_id, owner FROM trip_leases WHERE trip_id LIKE 'e2e-compose-%'"))
            assert {row.trip_id: row.owner for row in grants} == booked
        for component in PARTICIPANTS:
            url = local_mesh.database_url(component).replace("postgresql://", "postgresql+psycopg://")
            participant = create_engine(url)
            try:
                with participant.connect() as conn:
                    count = conn.execute(text("SELECT count(*) FROM reservations WHERE status = 'CONFIRMED'")).scalar()
                    assert count == len(booked), f"{component}: {count} confirmed reservations in its own database"
            finally:
                participant.dispose()
    finally:
        engine.dispose()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mails = [p.read_text(errors="replace") for p in local_mesh.mail_dir().glob("*.eml")]
        if all(any(trip_id in mail for mail in mails) for trip_id in booked):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"not every trip was mailed to {local_mesh.mail_dir()}\n{local_mesh.logs()}")

    with urllib.request.urlopen(f"http://{local_mesh.address('dashboard')}/", timeout=10) as page:
        html = page.read().decode()
    assert all(trip_id in html for trip_id in booked), "the dashboard lists the trips of both replicas"
