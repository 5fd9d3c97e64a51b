"""Payment validation and bookkeeping rules (services/payment/domain.py), without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from services.kit.errors import InvalidRequestError, PaymentDeclinedError
from services.kit.money import Money
from services.participant.states import Record, Status
from services.payment.domain import (
    LedgerKind,
    MethodFacts,
    PaymentDetails,
    check_method,
    release_kind,
    validate_customer_id,
    validate_payment,
)

pytestmark = pytest.mark.unit

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
ADA_VISA = MethodFacts("pm_ada_visa", "cust-ada", "EUR", always_declines=False)
ADA_DECLINED = MethodFacts("pm_ada_declined", "cust-ada", "EUR", always_declines=True)


def details(
    *, customer_id: str = "cust-ada", method: str = "pm_ada_visa", minor: int = 12_950, currency: str = "EUR"
) -> PaymentDetails:
    return PaymentDetails("trip-1/payment", customer_id, method, Money(minor, currency))


def fields(error: InvalidRequestError) -> list[str]:
    return [v.field for v in error.violations]


def test_a_well_formed_request_passes() -> None:
    validate_payment(details())
    check_method(details(), ADA_VISA)


@pytest.mark.parametrize(
    ("request_details", "field", "words"),
    [
        (details(customer_id=""), "customer_id", "must not be empty"),
        (details(customer_id="   "), "customer_id", "must not be empty"),
        (details(method=""), "payment_method_id", "must not be empty"),
        (details(minor=0), "amount.minor_units", "must be positive"),
        (details(minor=-100), "amount.minor_units", "must be positive"),
        (details(currency="XYZ"), "amount.currency_code", "we do not take XYZ"),
        (details(currency=""), "amount.currency_code", "must be set"),
    ],
)
def test_malformed_requests_name_the_field_in_words(request_details: PaymentDetails, field: str, words: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_payment(request_details)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fields(caught.value) == [field]
    assert words in caught.value.violations[0].description


def test_every_bad_field_is_reported_at_once() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_payment(details(customer_id="", method="", minor=-1))
    assert fields(caught.value) == ["customer_id", "payment_method_id", "amount.minor_units"]


def test_an_accepted_currency_other_than_the_cards_is_invalid() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_method(details(currency="GBP"), ADA_VISA)
    assert fields(caught.value) == ["amount.currency_code"]
    assert "charged in EUR, not GBP" in caught.value.message


@pytest.mark.parametrize("method", [None, MethodFacts("pm_bob_mc", "cust-bob", "EUR", always_declines=False)])
def test_unknown_and_someone_elses_method_look_the_same(method: MethodFacts | None) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        check_method(details(method="pm_bob_mc"), method)
    assert fields(caught.value) == ["payment_method_id"]
    assert caught.value.message == "payment_method_id: customer 'cust-ada' has no payment method 'pm_bob_mc'"


def test_a_declining_card_is_a_business_refusal() -> None:
    with pytest.raises(PaymentDeclinedError) as caught:
        check_method(details(method="pm_ada_declined"), ADA_DECLINED)
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "CARD_DECLINED"


def test_insufficient_funds_reuses_the_declined_error_with_its_own_reason() -> None:
    error = PaymentDeclinedError("not enough credit", reason="INSUFFICIENT_FUNDS")
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS")


def test_empty_customer_id_for_a_listing_is_invalid() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_customer_id("")
    assert fields(caught.value) == ["customer_id"]
    validate_customer_id("cust-ada")


def record(status: Status, expire_in: float) -> Record:
    return Record(
        "trip-1/payment",
        status,
        "fp",
        {"payment_method_id": "pm_ada_visa"},
        12_950,
        "EUR",
        NOW + timedelta(seconds=expire_in),
        NOW,
        NOW,
    )


@pytest.mark.parametrize(
    ("status", "expire_in", "kind"),
    [
        (Status.HELD, 60, LedgerKind.VOID),
        (Status.HELD, -1, LedgerKind.EXPIRE),
        (Status.CONFIRMED, 60, LedgerKind.REFUND),
        (Status.CONFIRMED, -1, LedgerKind.REFUND),
    ],
)
def test_release_is_booked_as_void_expiry_or_refund(status: Status, expire_in: float, kind: LedgerKind) -> None:
    assert release_kind(record(status, expire_in), NOW) is kind
