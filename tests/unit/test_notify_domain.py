"""Notification validation, delivery state and the outbox's pure parts, without I/O."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from services.kit.clock import FakeClock
from services.kit.errors import InvalidRequestError
from services.notify.domain import (
    BODY_MAX_CHARS,
    SUBJECT_MAX_CHARS,
    DeliveryState,
    MessageDetails,
    delivery_state,
    recipient_problem,
    validate_message,
)
from services.notify.outbox import OutboxMessage, backoff_seconds, build_email, message_id
from services.notify.smtp_sink import eml_name
from services.participant.states import Status

pytestmark = pytest.mark.unit


def details(*, recipient: str = "ada@example.com", subject: str = "Your trip", body: str = "Hello") -> MessageDetails:
    return MessageDetails("trip-1/notify", recipient, subject, body)


def fields(error: InvalidRequestError) -> list[str]:
    return [v.field for v in error.violations]


@pytest.mark.parametrize("address", ["ada@example.com", "ada.lovelace+trips@mail.example.co.uk", "jörg@example.de"])
def test_plain_addresses_are_accepted(address: str) -> None:
    assert recipient_problem(address) is None


@pytest.mark.parametrize(
    "address",
    [
        "not-an-email",
        "ada@example",
        "@example.com",
        "ada@@example.com",
        "Ada <ada@example.com>",
        "ada@example.com, bob@example.com",
        "ada @example.com",
        "ada@example.com\n",
        "ada@exa\x00mple.com",
        "a" * 250 + "@example.com",
    ],
)
def test_anything_but_one_plain_address_is_refused(address: str) -> None:
    assert recipient_problem(address) is not None


def test_empty_recipient_says_what_is_expected() -> None:
    assert recipient_problem("") == "must not be empty; give one e-mail address such as ada@example.com"


def test_a_well_formed_message_passes() -> None:
    validate_message(details(subject="s" * SUBJECT_MAX_CHARS, body="b" * BODY_MAX_CHARS))


@pytest.mark.parametrize(
    ("message", "field", "words"),
    [
        (details(recipient="not-an-email"), "recipient", "is not a single e-mail address"),
        (details(subject=""), "subject", "must not be empty"),
        (details(subject="  "), "subject", "must not be empty"),
        (details(subject="s" * (SUBJECT_MAX_CHARS + 1)), "subject", "at most 200 characters, got 201"),
        (details(subject="Your trip\r\nBcc: everyone@example.com"), "subject", "single line"),
        (details(body=""), "body", "must not be empty"),
        (details(body="b" * (BODY_MAX_CHARS + 1)), "body", "at most 20000 characters"),
    ],
)
def test_malformed_messages_name_the_field_in_words(message: MessageDetails, field: str, words: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_message(message)
    assert fields(caught.value) == [field]
    assert words in caught.value.violations[0].description


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_message(details(recipient="x", subject="", body=""))
    assert fields(caught.value) == ["recipient", "subject", "body"]


@pytest.mark.parametrize(
    ("status", "outbox_state", "expected"),
    [
        (Status.HELD, None, DeliveryState.PENDING),
        (Status.CONFIRMED, "PENDING", DeliveryState.PENDING),
        (Status.CONFIRMED, "SENT", DeliveryState.SENT),
        (Status.CANCELLED, "DISCARDED", DeliveryState.DISCARDED),
        (Status.CANCELLED, "SENT", DeliveryState.SENT),
        (Status.CANCELLED, None, DeliveryState.DISCARDED),
        (Status.EXPIRED, None, DeliveryState.DISCARDED),
    ],
)
def test_delivery_state(status: Status, outbox_state: str | None, expected: DeliveryState) -> None:
    assert delivery_state(status, outbox_state) is expected


def test_message_id_names_the_reservation_in_a_valid_form() -> None:
    assert message_id("trip-1/notify", "tripmesh <bookings@tripmesh.local>") == "<trip-1%2Fnotify@tripmesh.local>"
    assert message_id("a..b:c", "x@mail.example") == "<a%2E%2Eb%3Ac@mail.example>"


def test_the_email_is_a_proper_message() -> None:
    outgoing = OutboxMessage("trip-1/notify", "ada@example.com", "Your trip ✈", "Hello Ada,\nall booked.")
    email = build_email(outgoing, sender="tripmesh <bookings@tripmesh.local>", clock=FakeClock())
    parsed = message_from_bytes(email.as_bytes(), policy=default_policy)
    assert parsed["To"] == "ada@example.com"
    assert parsed["From"] == "tripmesh <bookings@tripmesh.local>"
    assert parsed["Subject"] == "Your trip ✈"
    assert parsed["Message-ID"] == "<trip-1%2Fnotify@tripmesh.local>"
    assert parsed["Date"] == "Mon, 01 Mar 2027 12:00:00 +0000"
    assert parsed.get_content().strip() == "Hello Ada,\nall booked."  # type: ignore[attr-defined]


def test_headers_that_are_not_ascii_are_encoded_and_read_back() -> None:
    outgoing = OutboxMessage("trip-2/notify", "Zoë Ø <zoe@example.com>", "Zürich ✈ Lisboa", "Olá Zoë,\nboa viagem.")
    raw = build_email(outgoing, sender="tripmesh <bookings@tripmesh.local>", clock=FakeClock()).as_bytes()
    assert raw.isascii()  # 7-bit on the wire: headers RFC 2047, the body quoted-printable
    parsed = message_from_bytes(raw, policy=default_policy)
    assert parsed["To"] == "Zoë Ø <zoe@example.com>" and parsed["Subject"] == "Zürich ✈ Lisboa"
    assert parsed.get_content().strip() == "Olá Zoë,\nboa viagem."  # type: ignore[attr-defined]


def test_backoff_doubles_up_to_its_ceiling() -> None:
    delays = [backoff_seconds(n, interval=0.2, maximum=5.0) for n in range(1, 8)]
    assert delays == [0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert backoff_seconds(10_000, interval=0.2, maximum=60.0) == 60.0


def test_eml_names_are_safe_and_sortable() -> None:
    clock = FakeClock()
    name = eml_name("<trip-1%2Fnotify@tripmesh.local>", clock.now(), "ab12")
    assert name == "20270301T120000.000000Z-trip-1_2Fnotify_tripmesh.local-ab12.eml"
    assert eml_name(None, clock.now(), "ab12").endswith("-no-message-id-ab12.eml")
    assert "/" not in eml_name("<../../etc/passwd>", clock.now(), "ab12")
