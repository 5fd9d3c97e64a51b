"""The payment participant as the contract tests see it: requests, bad inputs, refusals, conservation."""

from __future__ import annotations

import grpc

from services.payment.audit import check_conservation as check_conservation  # re-exported for the tests
from services.payment.seed import SCARCE_LIMIT_MINOR
from services.payment.servicer import SPEC
from tests.support.participant_case import BadInput, ParticipantCase, Refusal
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import payment_service_pb2 as payment_pb
from tripmesh.v1 import payment_service_pb2_grpc as payment_grpc

SCARCE_AMOUNT_MINOR = 1000
SCARCE_CAPACITY = SCARCE_LIMIT_MINOR // SCARCE_AMOUNT_MINOR  # pm_scarce_visa allows exactly 10 of them


def authorise(
    reservation_id: str,
    *,
    customer_id: str = "cust-ada",
    payment_method_id: str = "pm_ada_visa",
    minor_units: int = 12950,
    currency: str = "EUR",
) -> payment_pb.PaymentServiceReserveRequest:
    return payment_pb.PaymentServiceReserveRequest(
        reservation_id=reservation_id,
        customer_id=customer_id,
        payment_method_id=payment_method_id,
        amount=common_pb.Money(currency_code=currency, minor_units=minor_units),
    )


BAD_INPUTS = [
    BadInput("empty reservation id", lambda _rid: authorise(""), "reservation_id"),
    BadInput("empty customer id", lambda rid: authorise(rid, customer_id=""), "customer_id"),
    BadInput("unknown payment method", lambda rid: authorise(rid, payment_method_id="pm_nobody"), "payment_method_id"),
    BadInput(
        "another customer's payment method",
        lambda rid: authorise(rid, payment_method_id="pm_bob_mc"),
        "payment_method_id",
    ),
    BadInput("negative amount", lambda rid: authorise(rid, minor_units=-100), "amount.minor_units"),
    BadInput("zero amount", lambda rid: authorise(rid, minor_units=0), "amount.minor_units"),
    BadInput("currency we do not take", lambda rid: authorise(rid, currency="XYZ"), "amount.currency_code"),
    BadInput("currency other than the card's", lambda rid: authorise(rid, currency="GBP"), "amount.currency_code"),
]

REFUSALS = [
    Refusal(
        "card declined by the issuer",
        lambda rid: authorise(rid, payment_method_id="pm_ada_declined"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CARD_DECLINED",
    ),
    Refusal(
        "EUR 500 on a EUR 200 limit",
        lambda rid: authorise(rid, customer_id="cust-bob", payment_method_id="pm_bob_mc", minor_units=50_000),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
    ),
]


CASE = ParticipantCase(
    name="payment",
    spec=SPEC,
    stub=payment_grpc.PaymentServiceStub,
    reserve_request=authorise,
    other_request=lambda rid: authorise(rid, minor_units=9900),
    confirm_request=lambda rid: payment_pb.PaymentServiceConfirmRequest(reservation_id=rid),
    cancel_request=lambda rid: payment_pb.PaymentServiceCancelRequest(reservation_id=rid),
    get_request=lambda rid: payment_pb.PaymentServiceGetReservationRequest(reservation_id=rid),
    bad_inputs=BAD_INPUTS,
    refusals=REFUSALS,
    scarce_request=lambda rid: authorise(
        rid, customer_id="cust-scarce", payment_method_id="pm_scarce_visa", minor_units=SCARCE_AMOUNT_MINOR
    ),
    scarce_capacity=SCARCE_CAPACITY,
    check_conservation=check_conservation,
)
