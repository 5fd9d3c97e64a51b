"""The pure parts of security: card numbers and e-mails (kit.redact), request limits (kit.limits),
caller rules (kit.authz), certificates (kit.certs) and TLS configuration (kit.tls)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from services.kit import logging as kit_logging
from services.kit.authz import allowed
from services.kit.certs import ALL_NAMES, issue
from services.kit.errors import InvalidRequestError
from services.kit.limits import Undecodable, check_request, message_violations
from services.kit.redact import find_card_numbers, log_redactor, luhn_valid, mask_email, redact
from services.kit.tls import TlsConfigError, tls_files
from tripmesh.v1 import notification_service_pb2 as notify_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "text",
    ["4242424242424242", "pay 4242 4242 4242 4242 now", "5555-5555-5555-4444", "378282246310005", "3782 822463 10005"],
)
def test_card_numbers_are_found(text: str) -> None:
    assert find_card_numbers(text)


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424241",  # fails Luhn
        "TM101-20270315",
        "2027-03-15 2027-03-22",
        "trip-20270315-0001",
        "10000000000000",  # pm_load_visa's credit limit: not Luhn-valid
        "12345678901234567890123",  # longer than any card number
        "pm_ada_visa",
    ],
)
def test_other_numbers_are_not_card_numbers(text: str) -> None:
    assert not find_card_numbers(text)


def test_luhn() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_emails_are_masked_to_their_first_letter() -> None:
    assert mask_email("to ada.lovelace@example.com and b@x.org") == "to a***@example.com and b***@x.org"
    assert redact("card 4242424242424242 of ada@example.com") == "card [card number removed] of a***@example.com"


def test_the_log_redactor_reaches_nested_values() -> None:
    event: dict[str, Any] = {"event": "mail_received", "rcpt_tos": ["ada@example.com"], "meta": {"to": "b@c.io"}}
    assert log_redactor(None, "info", event) == {
        "event": "mail_received",
        "rcpt_tos": ["a***@example.com"],
        "meta": {"to": "b***@c.io"},
    }


def test_configured_logging_masks_structlog_and_stdlib_lines(capsys: pytest.CaptureFixture[str]) -> None:
    kit_logging.configure("test", fmt="json")
    try:
        structlog.get_logger("t").info("sent", to="ada@example.com")
        logging.getLogger("lib").warning("failed for bob@example.com with 4242424242424242")
        try:
            raise ValueError("boom for carol@example.com")
        except ValueError:
            structlog.get_logger("t").exception("crashed")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert "a***@example.com" in err and "b***@example.com" in err and "c***@example.com" in err
    assert "ada@" not in err and "bob@" not in err and "carol@" not in err and "4242424242424242" not in err


def test_limits_name_each_field_and_its_limit() -> None:
    request = trip_pb.BookTripRequest(
        trip_id="t" * 300, customer=trip_pb.Customer(name="4242 4242 4242 4242"), payment_method_id="pm_ok"
    )
    violations = {v.field: v.description for v in message_violations(request)}
    assert violations == {
        "trip_id": "at most 256 characters, got 300",
        "customer.name": (
            "looks like a payment card number: card numbers are never accepted, use a payment method token"
        ),
    }


def test_a_notification_body_may_be_longer_than_the_default() -> None:
    ok = notify_pb.NotificationServiceReserveRequest(body="b" * 10_000, subject="s" * 400)
    assert message_violations(ok) == []
    too_long = notify_pb.NotificationServiceReserveRequest(body="b" * 20_000)
    assert [v.field for v in message_violations(too_long)] == ["body"]


def test_check_request_refuses_undecodable_and_oversized() -> None:
    with pytest.raises(InvalidRequestError, match=r"is not a valid tripmesh\.v1\.GetTripRequest message"):
        check_request(Undecodable("tripmesh.v1.GetTripRequest", "Error parsing message"))
    with pytest.raises(InvalidRequestError, match="trip_id: at most 256"):
        check_request(trip_pb.GetTripRequest(trip_id="x" * 257))
    check_request(trip_pb.GetTripRequest(trip_id="fine"))


@pytest.mark.parametrize(
    ("identity", "method", "expected"),
    [
        ("spiffe://tripmesh/coordinator", "/tripmesh.v1.FlightService/Reserve", True),
        ("spiffe://tripmesh/client", "/tripmesh.v1.FlightService/Reserve", False),
        ("spiffe://tripmesh/payment", "/tripmesh.v1.PaymentService/Confirm", False),
        (None, "/tripmesh.v1.HotelService/Cancel", False),
        ("spiffe://tripmesh/client", "/tripmesh.v1.FlightService/SearchFlights", True),
        ("spiffe://tripmesh/client", "/tripmesh.v1.PaymentService/GetReservation", True),
        ("spiffe://tripmesh/client", "/tripmesh.v1.TripCoordinator/BookTrip", True),
    ],
)
def test_only_the_coordinator_may_change_participants(identity: str | None, method: str, expected: bool) -> None:
    assert allowed(identity, method) is expected


def test_certs_chain_to_the_ca_and_name_their_identity(tmp_path: Path) -> None:
    issued = issue(tmp_path)
    assert len(issued.created) == 2 + 2 * len(ALL_NAMES)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for name in ALL_NAMES:
        cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"spiffe://tripmesh/{name}" in sans.get_values_for_type(x509.UniformResourceIdentifier)
        assert {"localhost", name} <= set(sans.get_values_for_type(x509.DNSName))
        assert (tmp_path / f"{name}-key.pem").stat().st_mode & 0o777 == 0o600
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    again = issue(tmp_path)
    assert again.created == [] and (tmp_path / "ca.pem").read_bytes() == ca.public_bytes(Encoding.PEM)


def test_tls_configuration(tmp_path: Path) -> None:
    assert tls_files("flight", {}) is None
    by_dir = tls_files("flight", {"TRIPMESH_TLS_DIR": str(tmp_path)})
    assert by_dir is not None and by_dir.cert == tmp_path / "flight.pem" and by_dir.ca == tmp_path / "ca.pem"
    explicit = tls_files(
        "client",
        {
            "TRIPMESH_TLS_DIR": "/elsewhere",
            "TRIPMESH_CLIENT_TLS_CERT": "c.pem",
            "TRIPMESH_CLIENT_TLS_KEY": "k.pem",
            "TRIPMESH_CLIENT_TLS_CA": "ca.pem",
        },
    )
    assert explicit is not None and explicit.cert == Path("c.pem")
    with pytest.raises(TlsConfigError, match="TRIPMESH_HOTEL_TLS_KEY, TRIPMESH_HOTEL_TLS_CA must be set too"):
        tls_files("hotel", {"TRIPMESH_HOTEL_TLS_CERT": "c.pem"})
    assert by_dir is not None
    with pytest.raises(TlsConfigError, match="run `tripmesh certs`"):
        by_dir.server_credentials()
