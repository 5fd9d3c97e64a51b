"""Participant records to and from the shared proto messages (adapter layer)."""

from __future__ import annotations

from datetime import date

from google.protobuf import timestamp_pb2

from services.participant.states import Record, Status
from tripmesh.v1 import common_pb2 as common_pb

STATUS_TO_PROTO = {
    Status.HELD: common_pb.RESERVATION_STATUS_HELD,
    Status.CONFIRMED: common_pb.RESERVATION_STATUS_CONFIRMED,
    Status.CANCELLED: common_pb.RESERVATION_STATUS_CANCELLED,
    Status.EXPIRED: common_pb.RESERVATION_STATUS_EXPIRED,
}


def reservation_to_proto(record: Record) -> common_pb.Reservation:
    message = common_pb.Reservation(
        reservation_id=record.reservation_id,
        status=STATUS_TO_PROTO[record.status],
        price=common_pb.Money(currency_code=record.currency, minor_units=record.price_minor),
        tombstone=record.tombstone,
    )
    if record.expire_at is not None and record.status is Status.HELD:
        message.expire_time.FromDatetime(record.expire_at)
    message.create_time.FromDatetime(record.created_at)
    message.update_time.FromDatetime(record.updated_at)
    return message


def date_from_proto(value: common_pb.Date) -> date | None:
    """A Date message as a date, or None when unset or impossible (the caller names the field)."""
    try:
        return date(value.year, value.month, value.day)
    except ValueError:
        return None


def date_to_proto(value: date) -> common_pb.Date:
    return common_pb.Date(year=value.year, month=value.month, day=value.day)


def timestamp(value: object) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)  # type: ignore[arg-type]
    return stamp
