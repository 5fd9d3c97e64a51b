"""docker-compose.yml, checked without Docker: its shape, then its very commands run as local processes.

No Docker engine is needed. The file is parsed with PyYAML and checked (commands, health checks,
start order by health, volumes, the published port). Then every service's `command` and
`environment` run as local processes through coordinator/launcher.py, translated the way Docker's
network would resolve them: a service name becomes 127.0.0.1, each port a free port, and each volume
a directory under the test's tmp dir. The processes start in depends_on order, each level once the
previous one is healthy; every compose healthcheck command must then pass, and one trip booked
through the coordinator must end CONFIRMED with its confirmation e-mail in the sink's mail dir.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from coordinator import cli_format
from coordinator.launcher import Launcher, LaunchError
from coordinator.launcher import free_ports as launcher_free_ports
from services.kit.healthcheck import grpc_serving, tcp_open
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
SERVICES = {"smtp-sink", "flight", "hotel", "payment", "notify", "coordinator"}
PARTICIPANTS = ("flight", "hotel", "payment", "notify")
RESERVED_PORTS = {2525, *range(50050, 50056)}
HEALTHCHECK = ["CMD", "python", "-m", "services.kit.healthcheck"]


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


# --- the file's shape ---------------------------------------------------------------------------------


def test_compose_declares_the_whole_mesh() -> None:
    services = load_compose()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        command = service.get("command")
        assert isinstance(command, list) and command[:2] == ["python", "-m"] and len(command) == 3, name
        test = service.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[:4] == HEALTHCHECK, f"{name}: healthcheck {test}"
        assert service.get("build") == "." and service.get("image"), f"{name} must use the one image"
        env = environment(service)
        assert env.get("TRIPMESH_VAR_DIR") == "/data", name
    assert services["coordinator"]["command"][2] == "coordinator"
    assert services["smtp-sink"]["command"][2] == "services.notify.smtp_sink"
    for name in PARTICIPANTS:
        assert services[name]["command"][2] == f"services.{name}"


def test_compose_starts_each_service_once_what_it_needs_is_healthy() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        for dep, condition in depends_on(service).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
    assert set(depends_on(services["coordinator"])) == set(PARTICIPANTS)
    assert set(depends_on(services["notify"])) == {"smtp-sink"}
    assert start_levels(services) == [["flight", "hotel", "payment", "smtp-sink"], ["notify"], ["coordinator"]]


def test_compose_wires_the_coordinator_to_every_participant_and_publishes_50050() -> None:
    services = load_compose()["services"]
    env = environment(services["coordinator"])
    for port, name in enumerate(PARTICIPANTS, start=50051):
        assert env[f"TRIPMESH_COORDINATOR_{name.upper()}_ADDRESS"] == f"{name}:{port}"
    assert [str(p) for p in services["coordinator"]["ports"]] == ["50050:50050"]
    assert environment(services["notify"])["TRIPMESH_NOTIFY_SMTP_HOST"] == "smtp-sink"
    for name, service in services.items():
        if name != "coordinator":
            assert not service.get("ports"), f"only the coordinator is published, not {name}"
        listen = {k: v for k, v in environment(service).items() if k.endswith("_HOST") and "SMTP_HOST" not in k}
        assert set(listen.values()) == {"0.0.0.0"}, f"{name} must listen on every interface: {listen}"


def test_compose_gives_each_database_its_own_volume_and_mail_a_bind_mount() -> None:
    compose = load_compose()
    services = compose["services"]
    for name in (*PARTICIPANTS, "coordinator"):
        assert services[name]["volumes"] == [f"{name}-data:/data"], name
        assert f"{name}-data" in compose["volumes"]
    assert services["smtp-sink"]["volumes"] == ["./var/mail:/data/mail"]


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
    """Ports the kernel hands out for port 0; never one of the mesh's documented defaults."""
    return launcher_free_ports(count, avoid=RESERVED_PORTS)


@dataclass
class Translation:
    """How Docker's view of the mesh maps onto this machine for one test run.

    Each container gets a directory standing in for its root file system; its volumes and bind mounts
    are symlinks inside it (so /data/mail of the sink is ./var/mail, as in Docker), and an absolute
    path in its environment or command is taken inside that directory.
    """

    services: set[str]
    ports: dict[str, str]  # compose port -> free local port
    root: Path

    def container_root(self, service: str) -> Path:
        return self.root / "containers" / service

    def value(self, service: str, value: str, *, is_port: bool = False) -> str:
        if value in self.services or value == "0.0.0.0":
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
        return {key: self.value(service, value, is_port=key.endswith("_PORT")) for key, value in env.items()}


def translate(compose: Mapping[str, Any], root: Path) -> Translation:
    services = compose["services"]
    compose_ports = sorted(
        {v for s in services.values() for k, v in environment(s).items() if k.endswith("_PORT")}, key=int
    )
    local_ports = map(str, free_ports(len(compose_ports)))
    translation = Translation(set(services), dict(zip(compose_ports, local_ports, strict=True)), root)
    for name, service in services.items():
        container = translation.container_root(name)
        container.mkdir(parents=True)
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            host = root / "host" / source.removeprefix("./") if source.startswith("./") else root / "volumes" / source
            host.mkdir(parents=True, exist_ok=True)
            mount_point = container / target.lstrip("/")
            mount_point.parent.mkdir(parents=True, exist_ok=True)
            mount_point.symlink_to(host, target_is_directory=True)
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

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))


def _probe(mesh_address: str, grpc_probe: bool) -> Any:
    if grpc_probe:
        return lambda: grpc_serving(mesh_address, timeout=1.0)
    return lambda: tcp_open(mesh_address, timeout=1.0)


@pytest.fixture(scope="module")
def local_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    root = tmp_path_factory.mktemp("compose")
    compose = load_compose()
    services = compose["services"]
    translation = translate(compose, root)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPMESH_")}
    launcher = Launcher(base_env=base_env, cwd=root, log_dir=root / "logs")
    mesh = LocalMesh(compose, translation, launcher, root / "logs")
    try:
        for level in start_levels(services):
            for name in level:
                module = services[name]["command"][2]
                env = translation.env(name, environment(services[name]))
                tcp = "--tcp" in services[name]["healthcheck"]["test"]
                launcher.start(name, module, env, probe=_probe(mesh.address(name), not tcp))
            launcher.wait_healthy(*level, timeout=60)
        yield mesh
    except LaunchError as error:
        pytest.fail(f"{error}\n{mesh.logs()}")
    finally:
        launcher.stop_all(grace=10)


def test_every_compose_healthcheck_passes(local_mesh: LocalMesh) -> None:
    for name in SERVICES:
        argv = local_mesh.healthcheck_argv(name)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{name}: {argv} -> {result.stderr}\n{local_mesh.logs()}"


def test_each_service_keeps_its_data_on_its_volume(local_mesh: LocalMesh) -> None:
    for name in (*PARTICIPANTS, "coordinator"):
        volume = local_mesh.translation.root / "volumes" / f"{name}-data"
        assert (volume / f"{name}.db").is_file(), f"{name}: {sorted(p.name for p in volume.iterdir())}"


def test_a_trip_booked_through_the_compose_mesh_is_confirmed_and_mailed(local_mesh: LocalMesh) -> None:
    trip_id = f"e2e-compose-{uuid.uuid4().hex[:12]}"
    request = trip_pb.BookTripRequest(
        trip_id=trip_id,
        customer=trip_pb.Customer(customer_id="cust-ada", email="ada@example.com", name="Ada"),
        flight=trip_pb.TripFlight(
            outbound_flight_id="TM101-20270315", cabin=flight_pb.CABIN_ECONOMY, passenger_count=1
        ),
        hotel=trip_pb.TripHotel(
            hotel_id="lis-alfama",
            room_type=hotel_pb.ROOM_TYPE_STANDARD,
            check_in=common_pb.Date(year=2027, month=3, day=15),
            check_out=common_pb.Date(year=2027, month=3, day=18),
            room_count=1,
        ),
        payment_method_id="pm_ada_visa",
        currency_code="EUR",
    )
    with grpc.insecure_channel(local_mesh.address("coordinator")) as channel:
        trip = trip_grpc.TripCoordinatorStub(channel).BookTrip(request, timeout=60).trip
    report = cli_format.format_trip(trip)
    assert trip.state == common_pb.TRIP_STATE_CONFIRMED, f"{report}\n{local_mesh.logs()}"
    assert trip.total.minor_units > 0 and trip.total.currency_code == "EUR", report
    assert {r.participant for r in trip.reservations} >= {"flight", "hotel", "payment"}, report

    mail_dir = local_mesh.translation.root / "host" / "var" / "mail"
    deadline = time.monotonic() + 30
    mails: list[str] = []
    while time.monotonic() < deadline:
        mails = [p.read_text(errors="replace") for p in mail_dir.glob("*.eml")]
        if any(trip_id in text and "ada@example.com" in text for text in mails):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"no e-mail for {trip_id} in {mail_dir} after 30 s ({len(mails)} others)\n{local_mesh.logs()}")

    shown = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "trip", trip_id, "--address", local_mesh.address("coordinator")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "state     CONFIRMED" in shown.stdout and "flight.reserve" in shown.stdout, shown.stdout
