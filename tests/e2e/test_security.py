"""The mesh with mutual TLS on, as `tripmesh up --tls` runs it: who gets in, who may call what, and
what never lands in a log line or a database row.

One mesh for the module (real processes, certificates made by `tripmesh up --tls` itself):

- the whole path works over TLS: `tripmesh book`, the health check and the README's grpcurl commands
  with the operators' client certificate;
- a caller with no certificate, with one from another CA, or in plaintext never gets past the
  handshake; the operators' certificate (or another service's) may read but not Reserve, Confirm or
  Cancel (PERMISSION_DENIED); none of them writes anything;
- after a workload that also tries a card number in every string field on the way to payment and
  notify, no log line and no database row holds a Luhn-valid 13-19 digit number, and no log line an
  unmasked e-mail address.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.kit.certs import issue
from services.kit.status import error_info
from services.kit.tls import TlsFiles
from tests.support.processes import REPO, RunningMesh, tripmesh_command, tripmesh_up
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import car_service_pb2_grpc as car_grpc
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import flight_service_pb2_grpc as flight_grpc
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import hotel_service_pb2_grpc as hotel_grpc
from tripmesh.v1 import notification_service_pb2 as notify_pb
from tripmesh.v1 import notification_service_pb2_grpc as notify_grpc
from tripmesh.v1 import payment_service_pb2 as payment_pb
from tripmesh.v1 import payment_service_pb2_grpc as payment_grpc
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

README = REPO / "README.md"
PAN = "4000056655665556"  # a Visa test number: Luhn-valid
PAN_SPACED = "5555 5555 5555 4444"
# An independent reader of card numbers (not the product's kit.redact): digit runs, spaces and dashes
# allowed inside, 13-19 digits, Luhn-valid.
CANDIDATE = re.compile(r"\d(?:[ -]?\d){12,18}")
EMAIL = re.compile(r"([A-Za-z0-9._%+-]+)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_numbers(text: str) -> list[str]:
    found = []
    for start in range(len(text)):  # every start: a longer run may hide a shorter valid number
        if text[start].isdigit() and (start == 0 or not text[start - 1].isdigit()):
            match = CANDIDATE.match(text, start)
            if match:
                digits = re.sub(r"\D", "", match.group())
                found += [digits[:n] for n in range(13, len(digits) + 1) if luhn(digits[:n])]
    return found


def unmasked_emails(text: str) -> list[str]:
    return [m.group() for m in EMAIL.finditer(text) if not re.fullmatch(r".\*\*\*", m.group(1))]


# --- the mesh -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    work = tmp_path_factory.mktemp("tls")
    certs = work / "var" / "certs"
    issue(certs)  # what `tripmesh up --tls` would create; made first so the probes below can use it
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRIPMESH_TLS_DIR", str(certs))  # this process's health probes present `client`
        with tripmesh_up(work, args=["--tls"]) as running:
            yield running


def certs_of(mesh: RunningMesh) -> Path:
    return mesh.var_dir / "certs"


def files(mesh: RunningMesh, name: str) -> TlsFiles:
    root = certs_of(mesh)
    return TlsFiles(root / f"{name}.pem", root / f"{name}-key.pem", root / "ca.pem")


def channel(mesh: RunningMesh, component: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(mesh.address(component))
    return grpc.secure_channel(mesh.address(component), credentials)


def data_versions(mesh: RunningMesh) -> dict[str, int]:
    versions = {}
    for path in sorted(mesh.var_dir.glob("*.db")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            versions[path.stem] = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            versions[path.stem + ".rows"] = sum(
                conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            )
    return versions


def book_request(trip: str, /, **changes: Any) -> trip_pb.BookTripRequest:
    request = trip_pb.BookTripRequest(
        trip_id=trip,
        customer=trip_pb.Customer(customer_id="cust-ada", email="ada.lovelace@example.com", name="Ada Lovelace"),
        flight=trip_pb.TripFlight(
            outbound_flight_id="TM101-20270315", cabin=flight_pb.CABIN_ECONOMY, passenger_count=1
        ),
        hotel=trip_pb.TripHotel(
            hotel_id="lis-alfama",
            room_type=hotel_pb.ROOM_TYPE_STANDARD,
            check_in=common_pb.Date(year=2027, month=3, day=15),
            check_out=common_pb.Date(year=2027, month=3, day=17),
        ),
        payment_method_id="pm_ada_visa",
        currency_code="EUR",
    )
    for path, value in changes.items():
        target: Any = request
        *parents, leaf = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)
    return request


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)


# --- the path works over TLS ------------------------------------------------------------------------


def test_the_mesh_says_it_runs_mutual_tls(mesh: RunningMesh) -> None:
    assert "transport: mutual TLS" in mesh.stdout(), mesh.output()
    assert mesh.stderr().count("mutual_tls") == 6, mesh.output()
    assert "plaintext" not in mesh.stderr().lower()


def test_the_cli_books_a_trip_over_tls(mesh: RunningMesh) -> None:
    certs = str(certs_of(mesh))
    coordinator = mesh.address("coordinator")
    booked = run(
        [*tripmesh_command(), "book", "--address", coordinator, "--tls-dir", certs, "--trip-id", "tls-cli-1",
         "--customer", "cust-ada", "--email", "ada@example.com", "--flight", "TM101-20270315",
         "--hotel", "lis-alfama", "--check-in", "2027-03-15", "--check-out", "2027-03-18",
         "--payment-method", "pm_ada_visa"]
    )  # fmt: skip
    assert booked.returncode == 0, booked.stderr
    assert "CONFIRMED" in booked.stdout
    shown = run([*tripmesh_command(), "trips", "--address", coordinator, "--tls-dir", certs])
    assert shown.returncode == 0 and "tls-cli-1" in shown.stdout, shown.stderr
    refused = run([*tripmesh_command(), "trips", "--address", coordinator], env=without_tls())
    assert refused.returncode == 1 and "TRIPMESH_TLS_DIR" in refused.stderr, refused.stderr


def without_tls() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRIPMESH_")}


def test_the_health_check_presents_the_client_certificate(mesh: RunningMesh) -> None:
    probe = [sys.executable, "-m", "services.kit.healthcheck", mesh.address("payment")]
    assert run(probe, env={**without_tls(), "TRIPMESH_TLS_DIR": str(certs_of(mesh))}).returncode == 0
    plain = run(probe, env=without_tls())
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr


def tls_examples() -> list[str]:
    fence = re.compile(r"^```bash\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
    return [m["body"] for m in fence.finditer(README.read_text()) if "grpcurl -cacert" in m["body"]]


def test_the_readme_grpcurl_commands_with_client_certificates_work(mesh: RunningMesh) -> None:
    examples = tls_examples()
    assert len(examples) >= 3, "README.md's Security section shows grpcurl with -cacert/-cert/-key"
    ports = {"50050": "coordinator", "50051": "flight", "50052": "hotel", "50053": "payment", "50054": "notify",
             "50055": "car"}  # fmt: skip
    outcomes = []
    for example in examples:
        command = re.sub(r"localhost:(5005\d)", lambda m: mesh.address(ports[m[1]]), example)
        command = command.replace("var/certs/", f"{certs_of(mesh)}/")
        result = subprocess.run(
            ["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
        outcomes.append((shlex.split(example)[-1], result.returncode, result.stdout + result.stderr))
    by_method = {method: (code, text) for method, code, text in outcomes}
    assert by_method["list"][0] == 0 and "tripmesh.v1.TripCoordinator" in by_method["list"][1], outcomes
    code, text = by_method["tripmesh.v1.TripCoordinator/BookTrip"]
    assert code == 0 and json.loads(text)["trip"]["state"] == "TRIP_STATE_CONFIRMED", text
    code, text = by_method["tripmesh.v1.FlightService/Reserve"]
    assert code == 64 + 7 and "PermissionDenied" in text and "CALLER_NOT_ALLOWED" in text, text


# --- who gets in, who may call what ---------------------------------------------------------------


def refusals() -> dict[str, Callable[[RunningMesh, Path], grpc.ChannelCredentials | None]]:
    def ca_only(mesh: RunningMesh, _work: Path) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=(certs_of(mesh) / "ca.pem").read_bytes())

    def other_ca(mesh: RunningMesh, work: Path) -> grpc.ChannelCredentials:
        issue(work / "other-ca")  # a CA of its own, with a 'coordinator' certificate of its own
        own = work / "other-ca"
        return grpc.ssl_channel_credentials(
            root_certificates=(certs_of(mesh) / "ca.pem").read_bytes(),  # it trusts the mesh: only we refuse it
            private_key=(own / "coordinator-key.pem").read_bytes(),
            certificate_chain=(own / "coordinator.pem").read_bytes(),
        )

    return {"no client certificate": ca_only, "another CA": other_ca, "plaintext": lambda _m, _w: None}


@pytest.mark.parametrize("how", list(refusals()))
def test_callers_without_a_certificate_of_the_ca_are_refused(mesh: RunningMesh, tmp_path: Path, how: str) -> None:
    credentials = refusals()[how](mesh, tmp_path)
    before = data_versions(mesh)
    with channel(mesh, "coordinator", credentials) as coordinator, channel(mesh, "flight", credentials) as flight:
        with pytest.raises(grpc.RpcError) as booked:
            trip_grpc.TripCoordinatorStub(coordinator).BookTrip(book_request(f"tls-refused-{len(how)}"), timeout=5)
        with pytest.raises(grpc.RpcError) as reserved:
            flight_grpc.FlightServiceStub(flight).Reserve(
                flight_pb.FlightServiceReserveRequest(
                    reservation_id="tls-refused/flight",
                    outbound_flight_id="TM101-20270315",
                    cabin=flight_pb.CABIN_ECONOMY,
                    passenger_count=1,
                ),
                timeout=5,
            )
    assert booked.value.code() == grpc.StatusCode.UNAVAILABLE, booked.value
    assert reserved.value.code() == grpc.StatusCode.UNAVAILABLE, reserved.value
    assert data_versions(mesh) == before


def participant_calls() -> list[tuple[str, Callable[[grpc.Channel], Any]]]:
    rid = "tls-denied/{}"
    flight = flight_pb.FlightServiceReserveRequest(
        reservation_id=rid.format("flight"), outbound_flight_id="TM101-20270315", cabin=1, passenger_count=1
    )
    hotel = hotel_pb.HotelServiceReserveRequest(
        reservation_id=rid.format("hotel"),
        hotel_id="lis-alfama",
        room_type=1,
        check_in=common_pb.Date(year=2027, month=3, day=15),
        check_out=common_pb.Date(year=2027, month=3, day=16),
        room_count=1,
    )
    payment = payment_pb.PaymentServiceReserveRequest(
        reservation_id=rid.format("payment"),
        customer_id="cust-ada",
        payment_method_id="pm_ada_visa",
        amount=common_pb.Money(currency_code="EUR", minor_units=100),
    )
    notify = notify_pb.NotificationServiceReserveRequest(
        reservation_id=rid.format("notify"), recipient="ada@example.com", subject="s", body="b"
    )
    car = car_pb.CarServiceReserveRequest(
        reservation_id=rid.format("car"),
        city="Lisbon",
        car_class=1,
        pick_up_date=common_pb.Date(year=2027, month=3, day=15),
        drop_off_date=common_pb.Date(year=2027, month=3, day=16),
    )
    calls: list[tuple[str, Callable[[grpc.Channel], Any]]] = []
    for component, stub, reserve, prefix, module in (
        ("flight", flight_grpc.FlightServiceStub, flight, "FlightService", flight_pb),
        ("hotel", hotel_grpc.HotelServiceStub, hotel, "HotelService", hotel_pb),
        ("payment", payment_grpc.PaymentServiceStub, payment, "PaymentService", payment_pb),
        ("notify", notify_grpc.NotificationServiceStub, notify, "NotificationService", notify_pb),
        ("car", car_grpc.CarServiceStub, car, "CarService", car_pb),
    ):
        confirm = getattr(module, f"{prefix}ConfirmRequest")(reservation_id=rid.format(component))
        cancel = getattr(module, f"{prefix}CancelRequest")(reservation_id=rid.format(component))
        for name, request in (("Reserve", reserve), ("Confirm", confirm), ("Cancel", cancel)):
            calls.append((f"{component}.{name}", lambda ch, s=stub, n=name, r=request: getattr(s(ch), n)(r, timeout=5)))
    return calls


@pytest.mark.parametrize("identity", ["client", "payment"])
def test_only_the_coordinator_may_reserve_confirm_or_cancel(mesh: RunningMesh, identity: str) -> None:
    credentials = files(mesh, identity).channel_credentials()
    before = data_versions(mesh)
    denied = {}
    for label, invoke in participant_calls():
        with channel(mesh, label.split(".")[0], credentials) as ch:
            try:
                invoke(ch)
            except grpc.RpcError as error:
                info = error_info(error)
                denied[label] = (error.code(), info.reason if info else "", error.details())
    assert len(denied) == 15, denied
    for label, (code, reason, message) in denied.items():
        assert code == grpc.StatusCode.PERMISSION_DENIED and reason == "CALLER_NOT_ALLOWED", (label, message)
        assert f"spiffe://tripmesh/{identity}" in message and "coordinator" in message
    assert data_versions(mesh) == before
    # Reads stay open to any certificate of the CA.
    with channel(mesh, "payment", credentials) as ch:
        methods = payment_grpc.PaymentServiceStub(ch).ListPaymentMethods(
            payment_pb.ListPaymentMethodsRequest(customer_id="cust-ada"), timeout=5
        )
    assert {m.last4 for m in methods.payment_methods} == {"4242", "0002"}


# --- no card number and no e-mail address where they do not belong -------------------------------


def card_attempts() -> list[tuple[str, str, Callable[[grpc.Channel], Any]]]:
    """(component, label, call) for a card number in every string field on the way to payment and notify."""
    attempts: list[tuple[str, str, Callable[[grpc.Channel], Any]]] = []
    fields = {
        "trip_id": "trip_id",
        "customer.customer_id": "customer__customer_id",
        "customer.email": "customer__email",
        "customer.name": "customer__name",
        "flight.outbound_flight_id": "flight__outbound_flight_id",
        "flight.return_flight_id": "flight__return_flight_id",
        "hotel.hotel_id": "hotel__hotel_id",
        "payment_method_id": "payment_method_id",
        "currency_code": "currency_code",
    }
    for i, (field, path) in enumerate(fields.items()):
        for j, pan in enumerate((PAN, PAN_SPACED, f"card {PAN} exp 12/29")):
            value = f"{pan}@example.com" if field == "customer.email" else pan
            request = book_request(f"tls-pan-{i}-{j}", **{path: value})
            attempts.append(
                (
                    "coordinator",
                    f"BookTrip {field}",
                    lambda ch, r=request: trip_grpc.TripCoordinatorStub(ch).BookTrip(r),
                )
            )
    payment = {"reservation_id": "x/payment", "customer_id": "cust-ada", "payment_method_id": "pm_ada_visa"}
    for field in payment:
        for pan in (PAN, PAN_SPACED):
            request = payment_pb.PaymentServiceReserveRequest(
                **{**payment, field: pan}, amount=common_pb.Money(currency_code="EUR", minor_units=100)
            )
            attempts.append(
                ("payment", f"Reserve {field}", lambda ch, r=request: payment_grpc.PaymentServiceStub(ch).Reserve(r))
            )
    attempts.append(
        (
            "payment",
            "Reserve amount.currency_code",
            lambda ch: payment_grpc.PaymentServiceStub(ch).Reserve(
                payment_pb.PaymentServiceReserveRequest(
                    **payment, amount=common_pb.Money(currency_code=PAN, minor_units=100)
                )
            ),
        )
    )
    notify = {"reservation_id": "x/notify", "recipient": "ada@example.com", "subject": "Your trip", "body": "Hello"}
    for field in notify:
        for pan in (PAN, PAN_SPACED, f"paid with {PAN}"):
            value = f"{pan}@example.com" if field == "recipient" else pan
            request = notify_pb.NotificationServiceReserveRequest(**{**notify, field: value})
            attempts.append(
                (
                    "notify",
                    f"Reserve {field}",
                    lambda ch, r=request: notify_grpc.NotificationServiceStub(ch).Reserve(r),
                )
            )
    reads: list[tuple[str, Any, str, Any]] = [
        ("payment", payment_grpc.PaymentServiceStub, "ListPaymentMethods",
         payment_pb.ListPaymentMethodsRequest(customer_id=PAN)),
        ("payment", payment_grpc.PaymentServiceStub, "GetReservation",
         payment_pb.PaymentServiceGetReservationRequest(reservation_id=PAN)),
        ("notify", notify_grpc.NotificationServiceStub, "GetReservation",
         notify_pb.NotificationServiceGetReservationRequest(reservation_id=PAN)),
    ]  # fmt: skip
    for component, stub, name, request in reads:
        attempts.append((component, name, lambda ch, s=stub, n=name, r=request: getattr(s(ch), n)(r)))
    return attempts


def test_no_card_number_and_no_email_address_leaks_into_logs_or_databases(mesh: RunningMesh) -> None:
    coordinator_cert = files(mesh, "coordinator").channel_credentials()  # the one identity that may Reserve
    with channel(mesh, "coordinator", files(mesh, "client").channel_credentials()) as ch:
        for n in range(3):
            trip = trip_grpc.TripCoordinatorStub(ch).BookTrip(book_request(f"tls-clean-{n}"), timeout=30).trip
            assert trip.state == common_pb.TRIP_STATE_CONFIRMED, trip
    refused = {}
    for component, label, invoke in card_attempts():
        with channel(mesh, component, coordinator_cert) as ch, pytest.raises(grpc.RpcError) as caught:
            invoke(ch)
        refused[label] = caught.value.code()
    assert set(refused.values()) == {grpc.StatusCode.INVALID_ARGUMENT}, refused
    assert card_numbers(f"x {PAN} y {PAN_SPACED}"), "the scanner must be able to find what it looks for"

    logs = mesh.stdout() + mesh.stderr()
    assert "a***@example.com" in logs  # e-mail addresses were logged, masked (notify, the SMTP sink)
    leaks = [(line, card_numbers(line), unmasked_emails(line)) for line in logs.splitlines()]
    leaks = [leak for leak in leaks if leak[1] or leak[2]]
    assert not leaks, "\n".join(line for line, *_ in leaks[:10])
    rows = 0
    for path in sorted(mesh.var_dir.glob("*.db")):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    rows += 1
                    found = card_numbers(" | ".join(map(str, row)))
                    assert not found, f"{path.name} {table}: {row}"
    assert rows > 100  # the seeded catalogue and the trips above were all read
