"""The real mesh as `make run` starts it, driven the way README.md tells a person to drive it.

One `tripmesh up` (the SMTP sink, four services and the coordinator as separate processes, on free
ports, with a tmp var dir) serves the whole module. Against it run, verbatim but for the ports: every
grpcurl example in the README, its Python snippet and its `tripmesh` commands. Then every database is
opened read-only for invariants I1-I6; the e-mails are counted against the confirmed trips, and the
seat and room-night counters against their passengers and rooms. Last, SIGINT stops the launcher,
which must take every child down with it and exit 0.

The README is parsed, not copied: a test fails if an example is removed, stops working, or prints
something other than what the README says it prints. Each group of commands runs once, in README
order, in a module fixture; the tests only check what came back, so any one of them can run alone.
"""

from __future__ import annotations

import datetime as dt
import email
import email.message
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from coordinator.launcher import port_in_use
from services.kit.healthcheck import grpc_serving, tcp_open
from tests.support.invariants import check_invariants
from tests.support.processes import DEFAULT_PORTS, REPO, RunningMesh, children_of, tripmesh_up
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

pytestmark = pytest.mark.e2e

README = REPO / "README.md"
GRPCURL = ".venv/bin/grpcurl"
README_ADDRESS = re.compile(r"localhost:(?P<port>5005[0-5])")
CLI_TRIP = "e2e-cli-book"  # the --trip-id added to the README's `tripmesh book`

# Every grpcurl example of the README, in its order: "<method> <trip id or state>".
GRPCURL_EXAMPLES = [
    "list",
    "describe",
    "SearchFlights",
    "SearchCars",
    "BookTrip ada-lisbon-1",
    "GetTrip ada-lisbon-1",
    "BookTrip ada-lisbon-car",
    "ChangeTrip ada-lisbon-car",
    "CancelTrip ada-lisbon-car",
    "BookTrip ada-vienna-sold-out",
    "BookTrip ada-lisbon-declined",
    "GetTrip ada-lisbon-declined",
    "WatchTrip ada-lisbon-declined",
    "ListTrips TRIP_STATE_CANCELLED",
    "BookTrip bad-1",
]
EVERY_STEP = {
    "flight.reserve", "hotel.reserve", "payment.reserve", "notify.reserve",
    "flight.confirm", "hotel.confirm", "payment.confirm", "notify.confirm",
}  # fmt: skip
DATABASES = {"coordinator", "flight", "hotel", "payment", "notify", "car"}


# --- the README, parsed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fence:
    lang: str
    body: str


@dataclass(frozen=True)
class GrpcurlExample:
    key: str
    command: str
    shown_output: str | None  # the plain fenced block right after the command, if the README shows one


def readme_fences() -> list[Fence]:
    fence = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
    return [Fence(m["lang"], m["body"]) for m in fence.finditer(README.read_text())]


def example_key(command: str) -> str:
    args = shlex.split(command)
    data = json.loads(args[args.index("-d") + 1]) if "-d" in args else {}
    at = next(i for i, arg in enumerate(args) if README_ADDRESS.fullmatch(arg))
    method = args[at + 1].rpartition("/")[2]  # list, describe, or the RPC's name
    return f"{method} {data.get('trip_id') or data.get('state') or ''}".strip()


def grpcurl_examples() -> list[GrpcurlExample]:
    fences = readme_fences()
    examples = []
    for i, fence in enumerate(fences):
        if fence.lang == "sh" and fence.body.lstrip().startswith(GRPCURL):
            after = fences[i + 1] if i + 1 < len(fences) and fences[i + 1].lang == "" else None
            examples.append(GrpcurlExample(example_key(fence.body), fence.body, after.body if after else None))
    return examples


def only_fence(predicate: Callable[[Fence], bool], what: str) -> Fence:
    found = [f for f in readme_fences() if predicate(f)]
    assert len(found) == 1, f"README.md should have exactly one {what}, has {len(found)}"
    return found[0]


def on_test_ports(command: str, mesh: RunningMesh) -> str:
    """The command with each documented localhost:5005X replaced by the same component's test port."""
    names = {str(port): name for name, port in DEFAULT_PORTS.items()}
    replaced, count = README_ADDRESS.subn(lambda m: f"localhost:{mesh.ports[names[m['port']]]}", command)
    assert count == 1, f"expected one localhost:5005X address in:\n{command}"
    return replaced


def run_sh(command: str, *, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command through bash from the repository root, as a person pasting it would."""
    return subprocess.run(
        ["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def described(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


def trip_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, described(result)
    trip: dict[str, Any] = json.loads(result.stdout)["trip"]
    return trip


def steps_by_name(trip: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in trip["steps"]}


# --- the mesh and what was run against it ------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with tripmesh_up(tmp_path_factory.mktemp("mesh")) as running:
        yield running


@pytest.fixture(scope="module")
def readme_runs(mesh: RunningMesh) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every grpcurl example of the README, run once in README order; key -> result."""
    assert Path(REPO, GRPCURL).exists(), f"{GRPCURL} is missing: make venv installs it"
    runs = {}
    for example in grpcurl_examples():
        assert example.key not in runs, f"two README examples are both {example.key!r}"
        runs[example.key] = run_sh(on_test_ports(example.command, mesh))
    return runs


@pytest.fixture(scope="module")
def snippet_run(mesh: RunningMesh) -> tuple[str, subprocess.CompletedProcess[str]]:
    """The README's Python snippet, run by the venv's python; (its trip id, result)."""
    snippet = only_fence(lambda f: f.lang == "python", "```python block").body
    match = re.search(r'trip_id="(?P<trip_id>[^"]+)"', snippet)
    assert match, snippet
    code = on_test_ports(snippet, mesh)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
    )
    return match["trip_id"], result


@pytest.fixture(scope="module")
def cli_runs(mesh: RunningMesh, readme_runs: object) -> dict[str, subprocess.CompletedProcess[str]]:
    """The README's `tripmesh` commands (book with a --trip-id added), then `tripmesh trip` of that trip.

    The CLI finds the coordinator from TRIPMESH_COORDINATOR_PORT, as it would for a person who moved it.
    """
    block = only_fence(lambda f: f.lang == "sh" and ".venv/bin/tripmesh book" in f.body, "`tripmesh book` block")
    commands = [shlex.split(line, comments=True) for line in block.body.replace("\\\n", " ").splitlines()]
    commands = [args for args in commands if args]
    assert [args[1] for args in commands] == ["book", "trip", "trips"], block.body
    commands[0][2:2] = ["--trip-id", CLI_TRIP]
    commands.append([commands[0][0], "trip", CLI_TRIP])
    # keyed "book" and, for the rest, the command line after `tripmesh`
    return {
        "book" if args[1] == "book" else shlex.join(args[1:]): run_sh(shlex.join(args), env=mesh.env)
        for args in commands
    }


def coordinator_stub_call(mesh: RunningMesh, call: Callable[[trip_grpc.TripCoordinatorStub], Any]) -> Any:
    with grpc.insecure_channel(mesh.address("coordinator")) as channel:
        return call(trip_grpc.TripCoordinatorStub(channel))


def wait_for_mail(directory: Path, trip_id: str, timeout: float = 10.0) -> email.message.Message:
    deadline = time.monotonic() + timeout
    while True:
        for path in sorted(directory.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes())
            if trip_id in str(message["Subject"]):
                return message
        if time.monotonic() > deadline:
            raise AssertionError(f"no e-mail about {trip_id} in {directory} after {timeout} s")
        time.sleep(0.05)


# --- the processes --------------------------------------------------------------------------------


def test_up_starts_six_processes_on_the_given_ports_and_wires_them_together(mesh: RunningMesh) -> None:
    assert set(mesh.banner) == set(DEFAULT_PORTS), mesh.output()
    for name, row in mesh.banner.items():
        assert row.address == mesh.address(name), name
        assert mesh.ports[name] != DEFAULT_PORTS[name]
    for name in DATABASES:
        assert mesh.banner[name].data == str(mesh.var_dir / f"{name}.db")
    assert mesh.banner["smtp-sink"].data.rstrip("/") == str(mesh.mail_dir)
    # the banner's PIDs are exactly the launcher's children, and every one answers
    assert {row.pid for row in mesh.banner.values()} == children_of(mesh.process.pid)
    for name in DATABASES:
        assert grpc_serving(mesh.address(name), timeout=5.0), name
    assert tcp_open(mesh.address("smtp-sink"), timeout=5.0)
    # the launcher told the coordinator where each participant is and notify where the sink is
    coordinator_env = mesh.children["coordinator"].environ()
    for participant in ("flight", "hotel", "payment", "notify"):
        assert coordinator_env[f"TRIPMESH_COORDINATOR_{participant.upper()}_ADDRESS"] == mesh.address(participant)
    notify_env = mesh.children["notify"].environ()
    assert notify_env["TRIPMESH_NOTIFY_SMTP_PORT"] == str(mesh.ports["smtp-sink"])


# --- the README's grpcurl examples ----------------------------------------------------------------


def test_the_readme_has_every_grpcurl_example() -> None:
    examples = grpcurl_examples()
    assert [e.key for e in examples] == GRPCURL_EXAMPLES
    shown = [e.key for e in examples if e.shown_output is not None]
    assert shown == ["BookTrip bad-1"], "only the bad-input example shows its output"


Runs = dict[str, subprocess.CompletedProcess[str]]


def check_list(runs: Runs, _mesh: RunningMesh) -> None:
    result = runs["list"]
    assert result.returncode == 0, described(result)
    services = result.stdout.split()
    assert {"tripmesh.v1.TripCoordinator", "grpc.health.v1.Health"} <= set(services)
    assert any(s.startswith("grpc.reflection.") for s in services), services


def check_describe(runs: Runs, _mesh: RunningMesh) -> None:
    result = runs["describe"]
    assert result.returncode == 0, described(result)
    assert "tripmesh.v1.TripCoordinator is a service" in result.stdout
    for rpc in ("BookTrip", "GetTrip", "ListTrips"):
        assert f"rpc {rpc} ( .tripmesh.v1.{rpc}Request ) returns ( .tripmesh.v1.{rpc}Response )" in result.stdout


def check_search_flights(runs: Runs, _mesh: RunningMesh) -> None:
    result = runs["SearchFlights"]
    assert result.returncode == 0, described(result)
    flights = json.loads(result.stdout)["flights"]
    assert "TM101-20270315" in [f["flight_id"] for f in flights]
    for found in flights:
        assert (found["origin"], found["destination"]) == ("LHR", "LIS")
        assert found["departure_date"] == {"year": 2027, "month": 3, "day": 15}
        assert {c["cabin"] for c in found["cabins"]} == {"CABIN_ECONOMY", "CABIN_PREMIUM_ECONOMY", "CABIN_BUSINESS"}
        assert all(int(c["fare"]["minor_units"]) > 0 and c["seats_available"] >= 2 for c in found["cabins"])


def check_search_cars(runs: Runs, _mesh: RunningMesh) -> None:
    result = runs["SearchCars"]
    assert result.returncode == 0, described(result)
    found = json.loads(result.stdout)
    assert found["city"] == "Lisbon"
    assert [c["car_class"] for c in found["cars"]] == [
        "CAR_CLASS_ECONOMY", "CAR_CLASS_COMPACT", "CAR_CLASS_MIDSIZE", "CAR_CLASS_SUV", "CAR_CLASS_LUXURY"
    ]  # fmt: skip
    assert all(int(c["total"]["minor_units"]) == 7 * int(c["daily_rate"]["minor_units"]) for c in found["cars"])


def check_change(runs: Runs, _mesh: RunningMesh) -> None:
    answer = json.loads(runs["ChangeTrip ada-lisbon-car"].stdout)
    change, trip = answer["change"], answer["trip"]
    assert change["outcome"] == "TRIP_CHANGE_OUTCOME_APPLIED", change.get("reason")
    assert change["price_difference"]["minor_units"] == str(2 * 4900) and change["revision"] == 2
    assert trip["state"] == "TRIP_STATE_CONFIRMED" and trip["booked"]["car"]["drop_off_date"]["day"] == 20
    statuses = {r["reservation_id"]: r["status"] for r in trip["reservations"]}
    assert statuses["ada-lisbon-car/car"] == "RESERVATION_STATUS_CANCELLED"
    assert statuses["ada-lisbon-car/car.2"] == statuses["ada-lisbon-car/payment.2"] == "RESERVATION_STATUS_CONFIRMED"
    assert trip["paid"] == trip["total"]


def check_cancel(runs: Runs, _mesh: RunningMesh) -> None:
    trip = trip_of(runs["CancelTrip ada-lisbon-car"])
    assert trip["state"] == "TRIP_STATE_CANCELLED" and trip["failure_reason"] == "cancelled by the customer"
    assert [c["outcome"] for c in trip["changes"]] == ["TRIP_CHANGE_OUTCOME_APPLIED", "TRIP_CHANGE_OUTCOME_CANCELLED"]
    statuses = {r["reservation_id"]: r["status"] for r in trip["reservations"]}
    assert statuses["ada-lisbon-car/flight"] == statuses["ada-lisbon-car/car.2"] == "RESERVATION_STATUS_CANCELLED"
    assert statuses["ada-lisbon-car/payment.3"] == "RESERVATION_STATUS_CONFIRMED"  # the refund, paid out
    assert "minor_units" not in trip["paid"]  # nothing kept: JSON leaves a zero out


def check_booking_with_a_car(runs: Runs, _mesh: RunningMesh) -> None:
    trip = trip_of(runs["BookTrip ada-lisbon-car"])
    assert trip["state"] == "TRIP_STATE_CONFIRMED", trip.get("failure_reason")
    assert trip["definition_version"] == "trip/2" and trip["definition_known"]
    parts = {r["participant"]: r for r in trip["reservations"]}
    prices = {name: int(r["price"].get("minor_units", 0)) for name, r in parts.items()}
    assert prices["car"] == 3 * 4900
    assert int(trip["total"]["minor_units"]) == prices["flight"] + prices["car"] == prices["payment"]
    assert {s["flight_id"]: s["seats"] for s in parts["flight"]["seats"]} == {
        "TM101-20270315": ["14A", "14C"],
        "TM102-20270322": ["14A", "14C"],
    }
    assert {"car.reserve", "car.confirm"} <= set(steps_by_name(trip))


def check_confirmed_booking(runs: Runs, mesh: RunningMesh) -> None:
    trip = trip_of(runs["BookTrip ada-lisbon-1"])
    assert trip["state"] == "TRIP_STATE_CONFIRMED", trip.get("failure_reason")
    prices = {r["participant"]: int(r["price"].get("minor_units", 0)) for r in trip["reservations"]}
    assert {r["participant"]: r["status"] for r in trip["reservations"]} == dict.fromkeys(
        ("flight", "hotel", "payment", "notify"), "RESERVATION_STATUS_CONFIRMED"
    )
    total = int(trip["total"]["minor_units"])
    assert total == prices["flight"] + prices["hotel"] == prices["payment"] > 0
    # the README quotes this trip's total when it explains minor units
    assert f'"minor_units": "{total}"' in README.read_text()
    assert set(steps_by_name(trip)) == EVERY_STEP and len(trip["steps"]) == len(EVERY_STEP)
    assert all(s["status"] == "STEP_STATUS_SUCCEEDED" for s in trip["steps"])

    mail = wait_for_mail(mesh.mail_dir, "ada-lisbon-1")
    assert mail["To"] == "ada@example.com"
    assert "ada-lisbon-1" in mail["Subject"]
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes) and b"TM101-20270315" in body and b"Ada Lovelace" in body


def check_get_confirmed(runs: Runs, _mesh: RunningMesh) -> None:
    booked, got = trip_of(runs["BookTrip ada-lisbon-1"]), trip_of(runs["GetTrip ada-lisbon-1"])
    assert got["state"] == "TRIP_STATE_CONFIRMED"
    assert got["total"] == booked["total"]
    assert [(s["name"], s["status"]) for s in got["steps"]] == [(s["name"], s["status"]) for s in booked["steps"]]
    assert all("start_time" in s and "end_time" in s and s["attempts"] == 1 for s in got["steps"])


def check_sold_out(runs: Runs, _mesh: RunningMesh) -> None:
    trip = trip_of(runs["BookTrip ada-vienna-sold-out"])
    assert trip["state"] == "TRIP_STATE_CANCELLED"
    assert "SOLD_OUT" in trip["failure_reason"]
    steps = steps_by_name(trip)
    refused = steps["flight.reserve"]
    assert (refused["status"], refused["error_code"], refused["error_reason"]) == (
        "STEP_STATUS_REFUSED", "RESOURCE_EXHAUSTED", "SOLD_OUT"
    )  # fmt: skip
    assert steps["hotel.reserve"]["status"] == steps["hotel.cancel"]["status"] == "STEP_STATUS_SUCCEEDED"
    assert not [name for name in steps if name.startswith("payment.")]
    assert [(r["participant"], r["status"]) for r in trip["reservations"]] == [
        ("hotel", "RESERVATION_STATUS_CANCELLED")
    ]


def check_declined(trip: dict[str, Any]) -> None:
    assert trip["state"] == "TRIP_STATE_CANCELLED"
    assert "CARD_DECLINED" in trip["failure_reason"]
    steps = steps_by_name(trip)
    refused = steps["payment.reserve"]
    assert (refused["status"], refused["error_code"], refused["error_reason"]) == (
        "STEP_STATUS_REFUSED", "FAILED_PRECONDITION", "CARD_DECLINED"
    )  # fmt: skip
    names = [s["name"] for s in trip["steps"]]
    assert names.index("notify.cancel") < min(names.index("flight.cancel"), names.index("hotel.cancel"))
    assert "payment.cancel" not in names and "payment.confirm" not in names
    for undo in ("notify.cancel", "flight.cancel", "hotel.cancel"):
        assert steps[undo]["status"] == "STEP_STATUS_SUCCEEDED", steps[undo]
    assert {r["participant"]: r["status"] for r in trip["reservations"]} == dict.fromkeys(
        ("flight", "hotel", "notify"), "RESERVATION_STATUS_CANCELLED"
    )


def check_booked_declined(runs: Runs, _mesh: RunningMesh) -> None:
    check_declined(trip_of(runs["BookTrip ada-lisbon-declined"]))


def check_get_declined(runs: Runs, _mesh: RunningMesh) -> None:
    booked, got = trip_of(runs["BookTrip ada-lisbon-declined"]), trip_of(runs["GetTrip ada-lisbon-declined"])
    check_declined(got)
    assert [s["name"] for s in got["steps"]] == [s["name"] for s in booked["steps"]]
    assert got["failure_reason"] == booked["failure_reason"]


def json_stream(text: str) -> list[dict[str, Any]]:
    """grpcurl prints a server stream as JSON objects one after another."""
    decoder, at, messages = json.JSONDecoder(), 0, []
    while text[at:].strip():
        message, at = decoder.raw_decode(text, len(text) - len(text[at:].lstrip()))
        messages.append(message)
    return messages


def check_watch_declined(runs: Runs, _mesh: RunningMesh) -> None:
    result = runs["WatchTrip ada-lisbon-declined"]
    assert result.returncode == 0, described(result)  # a finished trip: the snapshot, then the stream ends
    messages = json_stream(result.stdout)
    assert [list(m) for m in messages] == [["snapshot"]], described(result)
    check_declined(messages[0]["snapshot"])
    assert messages[0]["snapshot"] == trip_of(runs["GetTrip ada-lisbon-declined"])


def check_list_cancelled(runs: Runs, _mesh: RunningMesh) -> None:
    result = runs["ListTrips TRIP_STATE_CANCELLED"]
    assert result.returncode == 0, described(result)
    trips = json.loads(result.stdout)["trips"]
    # newest first
    # ada-lisbon-car, booked before them, was cancelled by its customer (CancelTrip) since
    assert [t["trip_id"] for t in trips] == ["ada-lisbon-declined", "ada-vienna-sold-out", "ada-lisbon-car"]
    assert {t["state"] for t in trips} == {"TRIP_STATE_CANCELLED"}


def grpcurl_error_lines(output: str) -> list[object]:
    """grpcurl's error text, line by line; each detail as parsed JSON (its spacing is not part of it)."""
    lines: list[object] = []
    for line in output.strip().splitlines():
        detail = re.fullmatch(r"\s*(\d+\))\s*(\{.*\})\s*", line)
        lines.append((detail[1], json.loads(detail[2])) if detail else " ".join(line.split()))
    return lines


def check_bad_input(runs: Runs, _mesh: RunningMesh) -> None:
    result = runs["BookTrip bad-1"]
    assert result.returncode == 64 + grpc.StatusCode.INVALID_ARGUMENT.value[0], described(result)  # as README says
    assert result.stdout == "", described(result)
    shown = next(e.shown_output for e in grpcurl_examples() if e.key == "BookTrip bad-1")
    assert shown is not None
    assert grpcurl_error_lines(result.stderr) == grpcurl_error_lines(shown), described(result)
    assert "Code: InvalidArgument" in result.stderr


CHECKS: dict[str, Callable[[Runs, RunningMesh], None]] = {
    "list": check_list,
    "describe": check_describe,
    "SearchFlights": check_search_flights,
    "SearchCars": check_search_cars,
    "BookTrip ada-lisbon-1": check_confirmed_booking,
    "GetTrip ada-lisbon-1": check_get_confirmed,
    "BookTrip ada-lisbon-car": check_booking_with_a_car,
    "ChangeTrip ada-lisbon-car": check_change,
    "CancelTrip ada-lisbon-car": check_cancel,
    "BookTrip ada-vienna-sold-out": check_sold_out,
    "BookTrip ada-lisbon-declined": check_booked_declined,
    "GetTrip ada-lisbon-declined": check_get_declined,
    "WatchTrip ada-lisbon-declined": check_watch_declined,
    "ListTrips TRIP_STATE_CANCELLED": check_list_cancelled,
    "BookTrip bad-1": check_bad_input,
}
assert list(CHECKS) == GRPCURL_EXAMPLES


@pytest.mark.parametrize("key", GRPCURL_EXAMPLES)
def test_readme_grpcurl_example(key: str, readme_runs: Runs, mesh: RunningMesh) -> None:
    assert key in readme_runs, f"README.md no longer has the grpcurl example {key!r}"
    CHECKS[key](readme_runs, mesh)


# --- the README's Python snippet and `tripmesh` commands --------------------------------------------


def test_readme_python_snippet_books_through_the_generated_stubs(
    snippet_run: tuple[str, subprocess.CompletedProcess[str]], mesh: RunningMesh
) -> None:
    trip_id, result = snippet_run
    assert result.returncode == 0, described(result)
    printed = re.fullmatch(r"TRIP_STATE_CONFIRMED (\d+)\n", result.stdout)
    assert printed, described(result)
    trip = coordinator_stub_call(mesh, lambda stub: stub.GetTrip(trip_pb.GetTripRequest(trip_id=trip_id), timeout=10))
    assert trip.trip.state == common_pb.TRIP_STATE_CONFIRMED
    assert int(printed[1]) == trip.trip.total.minor_units > 0


STEP_ROW = re.compile(r"^\d+\s+(?P<step>[a-z]+\.[a-z]+)(?: \(aux\))?\s+(?P<status>[A-Z_]+)\s+(?P<attempts>\d+)\s", re.M)


def check_cli_trip(output: str, trip_id: str) -> None:
    assert re.search(rf"^trip\s+{re.escape(trip_id)}$", output, re.M), output
    assert re.search(r"^state\s+CONFIRMED$", output, re.M), output
    assert re.search(r"^#\s+step\s+status\s+attempts", output, re.M), output
    rows = [(m["step"], m["status"], m["attempts"]) for m in STEP_ROW.finditer(output)]
    assert sorted(rows) == sorted((step, "SUCCEEDED", "1") for step in EVERY_STEP), output
    for participant in ("flight", "hotel", "payment", "notify"):
        assert re.search(rf"^{participant}\s+{re.escape(trip_id)}/{participant}\s+CONFIRMED\s", output, re.M), output


def test_readme_cli_books_a_trip_and_shows_its_steps(cli_runs: Runs) -> None:
    book = cli_runs["book"]
    assert book.returncode == 0, described(book)
    assert f"booking trip {CLI_TRIP}" in book.stderr
    check_cli_trip(book.stdout, CLI_TRIP)

    again = cli_runs[f"trip {CLI_TRIP}"]
    assert again.returncode == 0, described(again)
    check_cli_trip(again.stdout, CLI_TRIP)


def test_readme_cli_reads_trips(cli_runs: Runs) -> None:
    trip = cli_runs["trip ada-lisbon-1"]
    assert trip.returncode == 0, described(trip)
    check_cli_trip(trip.stdout, "ada-lisbon-1")

    trips = cli_runs["trips --state cancelled"]
    assert trips.returncode == 0, described(trips)
    listed = [line.split()[:2] for line in trips.stdout.splitlines()[1:] if line.strip()]
    expected = [
        ["ada-lisbon-declined", "CANCELLED"],
        ["ada-vienna-sold-out", "CANCELLED"],
        ["ada-lisbon-car", "CANCELLED"],
    ]
    assert listed == expected, trips.stdout


# --- what the databases say -------------------------------------------------------------------------


def readonly_engine(path: Path) -> AsyncEngine:
    return create_async_engine(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")


def wait_for_mails(directory: Path, count: int, seconds: float = 10.0) -> list[email.message.Message]:
    """The e-mails in directory once there are `count` of them (or whatever is there at the deadline)."""
    deadline = time.monotonic() + seconds
    while len(paths := sorted(directory.glob("*.eml"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [email.message_from_bytes(p.read_bytes()) for p in paths]


def nights(check_in: str, check_out: str) -> list[str]:
    first, last = dt.date.fromisoformat(check_in), dt.date.fromisoformat(check_out)
    return [(first + dt.timedelta(days=n)).isoformat() for n in range((last - first).days)]


async def test_every_database_agrees_with_what_was_booked(
    mesh: RunningMesh, readme_runs: Runs, snippet_run: tuple[str, Any], cli_runs: Runs
) -> None:
    files = {path.stem: path for path in mesh.var_dir.glob("*.db")}
    assert set(files) == DATABASES
    engines = {name: readonly_engine(path) for name, path in files.items()}
    coordinator = engines.pop("coordinator")
    try:
        assert await check_invariants(coordinator, engines) == []

        async with coordinator.connect() as conn:
            trips = (await conn.execute(text("SELECT trip_id, state, request FROM trips"))).all()
        assert {t.trip_id: t.state for t in trips} == {
            "ada-lisbon-1": "CONFIRMED",
            "ada-lisbon-car": "CANCELLED",  # booked, changed, then cancelled by its customer
            snippet_run[0]: "CONFIRMED",
            CLI_TRIP: "CONFIRMED",
            "ada-vienna-sold-out": "CANCELLED",
            "ada-lisbon-declined": "CANCELLED",
        }  # and nothing for bad-1, which was refused before anything was written
        confirmed = [json.loads(t.request) for t in trips if t.state == "CONFIRMED"]

        # one e-mail per confirmed trip, none for a cancelled one, but the changed and cancelled one's three
        mails = wait_for_mails(mesh.mail_dir, len(confirmed) + 3)
        about = Counter(m["Subject"] for m in mails)
        assert len(mails) == len(confirmed) + 3, about
        assert {s for s in about if "ada-lisbon-car" in s} == {
            f"Your trip ada-lisbon-car is {what}" for what in ("booked", "changed", "cancelled")
        }
        assert all(m["To"] == "ada@example.com" for m in mails)
        for request in confirmed:
            assert [s for s in about if request["trip_id"] in s] != [], (request["trip_id"], about)

        # the seat counters moved by exactly the confirmed trips' passengers, and nothing is held
        seats: Counter[tuple[str, str]] = Counter()
        rooms: Counter[tuple[str, str, str]] = Counter()
        for request in confirmed:
            flight = request["flight"]
            cabin = flight_pb.Cabin.Name(flight["cabin"]).removeprefix("CABIN_")
            for flight_id in filter(None, (flight["outbound_flight_id"], flight["return_flight_id"])):
                seats[flight_id, cabin] += flight["passenger_count"]
            if hotel := request.get("hotel"):
                room = hotel_pb.RoomType.Name(hotel["room_type"]).removeprefix("ROOM_TYPE_")
                for night in nights(hotel["check_in"], hotel["check_out"]):
                    rooms[hotel["hotel_id"], room, night] += hotel["room_count"]
        assert seats["TM101-20270315", "ECONOMY"] >= 3  # the README's trips, the snippet's and the CLI's

        async with engines["flight"].connect() as conn:
            moved = await conn.execute(
                text("SELECT flight_id, cabin, held, confirmed FROM flight_cabins WHERE held != 0 OR confirmed != 0")
            )
            assert {(r.flight_id, r.cabin): (r.held, r.confirmed) for r in moved} == {
                key: (0, count) for key, count in seats.items()
            }
        async with engines["hotel"].connect() as conn:
            moved = await conn.execute(
                text("SELECT hotel_id, room_type, night, held, confirmed FROM room_nights "
                     "WHERE held != 0 OR confirmed != 0")
            )  # fmt: skip
            assert {(r.hotel_id, r.room_type, str(r.night)): (r.held, r.confirmed) for r in moved} == {
                key: (0, count) for key, count in rooms.items()
            }
    finally:
        await coordinator.dispose()
        for engine in engines.values():
            await engine.dispose()


# --- stopping ---------------------------------------------------------------------------------------


def test_sigint_stops_every_process_and_exits_0(
    mesh: RunningMesh, readme_runs: Runs, snippet_run: object, cli_runs: Runs
) -> None:
    """Last in the module: the launcher stops every child by PID, gracefully, and exits 0."""
    assert len(mesh.leftovers()) == len(DEFAULT_PORTS), "every process should still be running"
    assert mesh.stop(signal.SIGINT, timeout=15.0) == 0, mesh.output()
    assert mesh.wait_until_gone(timeout=1.0) == [], mesh.output()
    stderr = mesh.stderr()
    assert "tripmesh: SIGINT received; stopping the mesh" in stderr
    summary = re.search(r"^tripmesh: stopped \((?P<codes>.*)\)$", stderr, re.M)
    assert summary, mesh.output()
    codes = dict(item.rsplit(" ", 1) for item in summary["codes"].split(", "))
    assert codes == dict.fromkeys(DEFAULT_PORTS, "0"), summary[0]
    for name in DEFAULT_PORTS:
        assert not port_in_use(mesh.address(name)), f"{name} still holds {mesh.address(name)}"
