"""Text for the tripmesh CLI: pure functions from tripmesh.v1 messages to aligned tables.

No I/O and no gRPC here, so every table is unit-tested (tests/unit/test_cli_format.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

GAP = "  "


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell, separated by two spaces; columns in `right` (indexes) are
    right-aligned. The last column is not padded, so no line ends in spaces."""
    table = [list(headers), *(list(row) for row in rows)]
    if any(len(row) != len(headers) for row in table):
        raise ValueError("every row needs one cell per header")
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    right_cols = set(right)
    lines = []
    for row in table:
        cells = [cell.rjust(widths[i]) if i in right_cols else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append(GAP.join(cells).rstrip())
    return "\n".join(lines)


def enum_label(name: str, prefix: str) -> str:
    """'TRIP_STATE_CONFIRMED' -> 'CONFIRMED' (the enum's prefix is noise in a table)."""
    return name.removeprefix(prefix) or name


def trip_state(value: common_pb.TripState.ValueType) -> str:
    return enum_label(common_pb.TripState.Name(value), "TRIP_STATE_")


def step_status(value: trip_pb.StepStatus.ValueType) -> str:
    return enum_label(trip_pb.StepStatus.Name(value), "STEP_STATUS_")


def reservation_status(value: common_pb.ReservationStatus.ValueType) -> str:
    return enum_label(common_pb.ReservationStatus.Name(value), "RESERVATION_STATUS_")


def format_money(money: common_pb.Money) -> str:
    """12950 EUR -> '129.50 EUR'; an unset amount -> '-'."""
    if not money.currency_code and money.minor_units == 0:
        return "-"
    sign = "-" if money.minor_units < 0 else ""
    whole, cents = divmod(abs(money.minor_units), 100)
    return f"{sign}{whole}.{cents:02d} {money.currency_code}".rstrip()


def format_time(ts: Timestamp) -> str:
    """A timestamp as UTC to the second, '2027-03-15T09:30:00Z'; unset -> '-'."""
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")


def _millis(ts: Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def _is_set(ts: Timestamp) -> bool:
    return ts.seconds != 0 or ts.nanos != 0


def step_error(step: trip_pb.TripStep) -> str:
    """'RESOURCE_EXHAUSTED/SOLD_OUT: no seat left' from whichever of code, reason, message are set."""
    label = "/".join(part for part in (step.error_code, step.error_reason) if part)
    if label and step.error_message:
        return f"{label}: {step.error_message}"
    return label or step.error_message


def _trip_origin(trip: trip_pb.Trip) -> Timestamp | None:
    if trip.HasField("create_time"):
        return trip.create_time
    starts = [s.start_time for s in trip.steps if s.HasField("start_time")]
    return min(starts, key=_millis) if starts else None


def _step_duration_ms(step: trip_pb.TripStep) -> str:
    if step.HasField("duration"):
        return str(step.duration.ToMilliseconds())
    if _is_set(step.start_time) and _is_set(step.end_time):
        return str(_millis(step.end_time) - _millis(step.start_time))
    return "-"


STEP_HEADERS = ("#", "step", "status", "attempts", "started ms", "duration ms", "error")


def step_rows(trip: trip_pb.Trip) -> list[list[str]]:
    origin = _trip_origin(trip)
    rows = []
    for number, step in enumerate(trip.steps, start=1):
        started = "-"
        if origin is not None and step.HasField("start_time"):
            started = f"+{_millis(step.start_time) - _millis(origin)}"
        name = f"{step.name} (aux)" if step.auxiliary else step.name
        rows.append(
            [
                str(number),
                name,
                step_status(step.status),
                str(step.attempts),
                started,
                _step_duration_ms(step),
                step_error(step),
            ]
        )
    return rows


def format_steps(trip: trip_pb.Trip) -> str:
    """The trip's step timeline: started is ms since the trip was created, duration is ms."""
    if not trip.steps:
        return "(no steps yet)"
    return format_table(STEP_HEADERS, step_rows(trip), right=(0, 3, 4, 5))


def format_reservations(trip: trip_pb.Trip) -> str:
    if not trip.reservations:
        return "(no reservations)"
    rows = [
        [r.participant, r.reservation_id, reservation_status(r.status), format_money(r.price)]
        for r in trip.reservations
    ]
    return format_table(("participant", "reservation", "status", "price"), rows, right=(3,))


def format_summary(trip: trip_pb.Trip) -> str:
    lines = [
        f"trip      {trip.trip_id}",
        f"state     {trip_state(trip.state)}",
        f"customer  {trip.customer_id or '-'}",
        f"total     {format_money(trip.total)}",
        f"created   {format_time(trip.create_time)}",
        f"updated   {format_time(trip.update_time)}",
    ]
    if trip.failure_reason:
        lines.append(f"reason    {trip.failure_reason}")
    return "\n".join(lines)


def format_trip(trip: trip_pb.Trip) -> str:
    """Everything `tripmesh trip` and `tripmesh book` print: summary, reservations, step timeline."""
    return "\n\n".join([format_summary(trip), format_reservations(trip), format_steps(trip)])


def format_trips(trips: Sequence[trip_pb.Trip]) -> str:
    if not trips:
        return "(no trips)"
    rows = [
        [
            t.trip_id,
            trip_state(t.state),
            t.customer_id,
            format_money(t.total),
            str(len(t.steps)),
            format_time(t.create_time),
            t.failure_reason,
        ]
        for t in trips
    ]
    return format_table(("trip", "state", "customer", "total", "steps", "created", "reason"), rows, right=(3, 4))


@dataclass(frozen=True)
class Endpoint:
    service: str
    address: str
    data: str
    pid: int


def format_endpoints(endpoints: Sequence[Endpoint]) -> str:
    """The table `tripmesh up` prints once everything is healthy."""
    rows = [[e.service, e.address, e.data, str(e.pid)] for e in endpoints]
    return format_table(("service", "address", "data", "pid"), rows, right=(3,))


def format_rpc_error(code: str, message: str, *, reason: str = "", violations: Sequence[tuple[str, str]] = ()) -> str:
    """'INVALID_ARGUMENT: message', then the ErrorInfo reason and each field violation on its own line."""
    lines = [f"{code}: {message}"]
    if reason:
        lines.append(f"  reason: {reason}")
    lines.extend(f"  {field}: {description}" for field, description in violations)
    return "\n".join(lines)
