"""PaymentService over gRPC: proto in, domain values to the store, proto out; and the service's SPEC."""

from __future__ import annotations

from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.clock import Clock
from services.kit.money import Money
from services.participant.convert import reservation_to_proto
from services.participant.runner import ParticipantSpec
from services.participant.servicer import ParticipantServicer
from services.participant.store import ReservationStore
from services.payment import models
from services.payment.domain import PaymentDetails, PaymentDomain, PaymentMethodView, validate_payment
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import payment_service_pb2 as payment_pb
from tripmesh.v1 import payment_service_pb2_grpc as payment_grpc


def details_from_proto(request: payment_pb.PaymentServiceReserveRequest) -> PaymentDetails:
    return PaymentDetails(
        reservation_id=request.reservation_id,
        customer_id=request.customer_id,
        payment_method_id=request.payment_method_id,
        amount=Money(request.amount.minor_units, request.amount.currency_code),
        refund_of=tuple(request.refund_of),
    )


def money_to_proto(money: Money) -> common_pb.Money:
    return common_pb.Money(currency_code=money.currency, minor_units=money.minor_units)


def method_to_proto(method: PaymentMethodView) -> payment_pb.PaymentMethod:
    return payment_pb.PaymentMethod(
        payment_method_id=method.payment_method_id,
        customer_id=method.customer_id,
        brand=method.brand,
        last4=method.last4,
        credit_limit=money_to_proto(method.credit_limit),
        available=money_to_proto(method.available),
    )


class PaymentServicer(ParticipantServicer[PaymentDetails], payment_grpc.PaymentServiceServicer):
    confirm_response = payment_pb.PaymentServiceConfirmResponse
    cancel_response = payment_pb.PaymentServiceCancelResponse
    get_response = payment_pb.PaymentServiceGetReservationResponse

    def __init__(self, store: ReservationStore[PaymentDetails], domain: PaymentDomain) -> None:
        super().__init__(store)
        self.domain = domain

    async def Reserve(
        self, request: payment_pb.PaymentServiceReserveRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb.PaymentServiceReserveResponse:
        details = details_from_proto(request)
        validate_payment(details)
        record = await self.store.reserve(details.reservation_id, details)
        return payment_pb.PaymentServiceReserveResponse(
            reservation=reservation_to_proto(record), payment_method_id=details.payment_method_id
        )

    async def ListPaymentMethods(
        self, request: payment_pb.ListPaymentMethodsRequest, context: grpc.aio.ServicerContext
    ) -> payment_pb.ListPaymentMethodsResponse:
        methods = await self.domain.list_methods(request.customer_id)
        return payment_pb.ListPaymentMethodsResponse(payment_methods=[method_to_proto(m) for m in methods])


def _make_servicer(store: ReservationStore[Any], domain: Any) -> PaymentServicer:
    return PaymentServicer(store, domain)


def _make_domain(engine: AsyncEngine, clock: Clock) -> PaymentDomain:
    return PaymentDomain(engine, clock)


SPEC = ParticipantSpec(
    component="payment",
    metadata=models.metadata,
    reservations=models.reservations,
    full_name=payment_pb.DESCRIPTOR.services_by_name["PaymentService"].full_name,
    register=payment_grpc.add_PaymentServiceServicer_to_server,
    make_domain=_make_domain,
    make_servicer=_make_servicer,
)
