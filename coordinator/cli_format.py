"""Text for the tripmesh CLI: pure functions from tripmesh.v1 messages to aligned tables.

No I/O and no gRPC here, so every table is unit-tested (tests/unit/test_cli_format.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from coordinator import demo
from coordinator.audit import AuditReport, Orphan
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


def change_outcome(change: trip_pb.TripChange) -> str:
    return enum_label(trip_pb.TripChangeOutcome.Name(change.outcome), "TRIP_CHANGE_OUTCOME_")


def format_changes(trip: trip_pb.Trip) -> str:
    """The changes and cancellation of a booked trip, oldest first: what each touched and how it ended."""
    rows = [
        [
            c.change_id,
            enum_label(trip_pb.TripChangeKind.Name(c.kind), "TRIP_CHANGE_KIND_").lower(),
            str(c.revision),
            change_outcome(c),
            "+".join(c.parts) or "-",
            "+".join(c.dropped) or "-",
            format_money(c.price_difference),
            c.reason,
        ]
        for c in trip.changes
    ]
    headers = ("change", "kind", "revision", "outcome", "reserved", "let go", "difference", "reason")
    return format_table(headers, rows, right=(2, 6))


def format_trip(trip: trip_pb.Trip) -> str:
    """Everything `tripmesh trip` and `tripmesh book` print: summary, reservations, step timeline; and the
    changes, for a trip that has any."""
    parts = [format_summary(trip), format_reservations(trip)]
    if trip.changes:
        parts.append(f"paid      {format_money(trip.paid)}\n\n{format_changes(trip)}")
    return "\n\n".join([*parts, format_steps(trip)])


def format_change(trip: trip_pb.Trip, change: trip_pb.TripChange) -> str:
    """What `tripmesh change` prints: how the change ended, then the whole trip."""
    outcome = change_outcome(change)
    where = f"change {change.change_id} of {trip.trip_id}"
    if change.outcome == trip_pb.TRIP_CHANGE_OUTCOME_APPLIED:
        moved = format_money(change.price_difference)
        headline = f"{where}: APPLIED ({'+'.join(change.parts) or 'nothing'} reserved anew; difference {moved})"
    elif change.outcome == trip_pb.TRIP_CHANGE_OUTCOME_REVERTED:
        headline = f"{where}: REVERTED, the trip stands as it was: {change.reason}"
    else:
        headline = f"{where}: {outcome}{_still_going(trip)}"
    return f"{headline}\n\n{format_trip(trip)}"


def format_cancel(trip: trip_pb.Trip) -> str:
    """What `tripmesh cancel` prints: where the trip went, then the whole trip."""
    state = trip_state(trip.state)
    if trip.state == common_pb.TRIP_STATE_CANCELLED:
        headline = f"cancelled {trip.trip_id}: {trip.failure_reason or 'cancelled'}; paid {format_money(trip.paid)}"
    elif trip.state == common_pb.TRIP_STATE_NEEDS_ATTENTION:
        headline = f"cancelling {trip.trip_id} is stuck: NEEDS_ATTENTION; `tripmesh retry {trip.trip_id}` sends it on"
    else:
        headline = f"cancelling {trip.trip_id}: {state}{_still_going(trip)}"
    return f"{headline}\n\n{format_trip(trip)}"


def _still_going(trip: trip_pb.Trip) -> str:
    return f" (still going; `tripmesh trip {trip.trip_id}` shows how it ends)"


def format_trips(trips: Sequence[trip_pb.Trip]) -> str:
    """The table `tripmesh trips` prints; trips waiting in NEEDS_ATTENTION get the step that is stuck
    and a hint on how to send them on again."""
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
    table = format_table(("trip", "state", "customer", "total", "steps", "created", "reason"), rows, right=(3, 4))
    stuck = [t for t in trips if t.state == common_pb.TRIP_STATE_NEEDS_ATTENTION]
    if not stuck:
        return table
    lines = [table, ""]
    for trip in stuck:
        failed = ", ".join(s.name for s in trip.steps if s.status == trip_pb.STEP_STATUS_FAILED) or "-"
        lines.append(f"{trip.trip_id} is stuck at {failed} (since {format_time(trip.update_time)})")
    some = "it" if len(stuck) == 1 else "one"
    lines.append(
        f"{_count(len(stuck), 'trip')} {'needs' if len(stuck) == 1 else 'need'} attention: once the failing "
        f"participant is back, `tripmesh retry TRIP_ID` sends {some} on again"
    )
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    """'1 trip', '3 trips'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def format_retry(before: str, trip: trip_pb.Trip) -> str:
    """What `tripmesh retry` prints: where the trip went, then the whole trip."""
    after = trip_state(trip.state)
    if trip.state == common_pb.TRIP_STATE_NEEDS_ATTENTION:
        headline = f"retried {trip.trip_id}: still {after}; the failing participant is not back yet"
    elif trip.state in (common_pb.TRIP_STATE_CONFIRMED, common_pb.TRIP_STATE_CANCELLED):
        headline = f"retried {trip.trip_id}: {before} -> {after}"
    else:
        headline = f"retried {trip.trip_id}: {after}{_still_going(trip)}"
    return f"{headline}\n\n{format_trip(trip)}"


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


# --- tripmesh audit -------------------------------------------------------------------------------

KNOWN_STATES = (
    "CONFIRMED",
    "CANCELLED",
    "NEEDS_ATTENTION",
    "PENDING",
    "RESERVING",
    "CONFIRMING",
    "COMPENSATING",
    "CHANGING",
    "CHANGE_CONFIRMING",
    "CHANGE_REVERTING",
    "CANCELLING",
)
KNOWN_STATUSES = ("HELD", "CONFIRMED", "CANCELLED", "EXPIRED")


def _ordered(found: Iterable[str], known: Sequence[str]) -> list[str]:
    present = set(found)
    return [k for k in known if k in present] + sorted(present - set(known))


def format_trip_counts(by_state: dict[str, int]) -> str:
    """'48 trips: 24 CONFIRMED, 24 CANCELLED' (states in saga order)."""
    total = sum(by_state.values())
    parts = ", ".join(f"{by_state[s]} {s}" for s in _ordered(by_state, KNOWN_STATES))
    return f"{_count(total, 'trip')}: {parts}" if parts else "0 trips"


def format_holds(holds: dict[str, dict[str, int]]) -> str:
    """Reservations by participant and status, as each participant's database has them."""
    statuses = _ordered((s for counts in holds.values() for s in counts), KNOWN_STATUSES)
    for status in ("HELD", "CONFIRMED"):
        if status not in statuses:
            statuses.insert(0 if status == "HELD" else 1, status)
    rows = [
        [name, *(str(counts.get(s, 0)) for s in statuses), str(sum(counts.values()))] for name, counts in holds.items()
    ]
    return format_table(("participant", *statuses, "total"), rows, right=range(1, len(statuses) + 2))


def format_orphans(orphans: Sequence[Orphan], *, limit: int = 20) -> str:
    rows = [[o.participant, o.reservation_id, o.status, o.trip_state] for o in orphans[:limit]]
    table = format_table(("participant", "reservation", "status", "trip"), rows)
    more = f"\n... and {len(orphans) - limit} more" if len(orphans) > limit else ""
    return table + more


def format_audit(report: AuditReport, source: str) -> str:
    """What `tripmesh audit` prints: counts, the orphaned holds, then a verdict and every violation."""
    reservations = sum(sum(c.values()) for c in report.holds.values())
    lines = [
        f"audit (read-only) of {source}",
        "",
        format_trip_counts(report.trips_by_state),
        "",
        format_holds(report.holds),
        "",
        f"orphaned holds: {report.orphaned_holds}",
    ]
    if report.orphans:
        lines.append(format_orphans(report.orphans))
    lines.append("")
    if report.ok:
        lines.append(
            f"OK    no violation of I1-I6 ({_count(report.trips, 'trip')}, {_count(reservations, 'reservation')})"
        )
    else:
        lines.append(f"FAIL  {_count(len(report.violations), 'violation')} of I1-I6:")
        lines.extend(f"  {v}" for v in report.violations)
    return "\n".join(lines)


# --- tripmesh demo --------------------------------------------------------------------------------

PATH_LABELS = {
    demo.PATH_NONE: "none",
    demo.PATH_FLIGHT: "flight only",
    demo.PATH_HOTEL: "hotel only",
    demo.PATH_FLIGHT_HOTEL: "flight + hotel",
    demo.PATH_FULL: "full chain",
}


def describe_fault(rule: dict[str, Any]) -> str:
    """One fault rule (services/kit/faults.py) for people: '15% UNAVAILABLE', '+30 ms', ..."""
    parts = []
    if rule.get("latency_ms"):
        parts.append(f"+{rule['latency_ms']:g} ms")
    failing = any(k in rule for k in ("error_rate", "code", "reason")) or not rule.get("latency_ms")
    if failing:
        default_rate = 1.0 if "match" in rule or "outage" in rule else 0.0
        rate = float(rule.get("error_rate", default_rate))
        error = "/".join(x for x in (rule.get("code", "UNAVAILABLE"), rule.get("reason")) if x)
        text = error if rate >= 1.0 else f"{rate:.0%} {error}"
        if rule.get("when") == "after":
            text += " after the call took effect (a lost reply)"
        parts.append(text)
    if "match" in rule:
        parts.append(f"for requests containing {rule['match']!r}")
    if "outage" in rule:
        start, end = rule["outage"]
        parts.append(f"from {start:g} s to {end:g} s after start")
    return " ".join(parts)


def format_faults(faults: dict[str, list[dict[str, Any]]]) -> str:
    rows = [[service, rule["method"], describe_fault(rule)] for service, rules in faults.items() for rule in rules]
    return format_table(("service", "method", "fault"), rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _undone(row: demo.ScenarioRow) -> str:
    return " | ".join(PATH_LABELS.get(path, path) for path, _ in row.paths.most_common()) or "-"


def _changed(row: demo.ScenarioRow) -> str:
    """How the changes or cancellations after booking ended: 'APPLIED', 'REVERTED', 'CANCELLED'."""
    return " | ".join(outcome for outcome, _ in row.changes.most_common()) or "-"


SCENARIO_HEADERS = (
    "scenario",
    "trips",
    "CONFIRMED",
    "CANCELLED",
    "NEEDS_ATTENTION",
    "undone",
    "then",
    "retried",
    "p50 ms",
    "p95 ms",
    "as expected",
)


def _scenario_cells(row: demo.ScenarioRow, *, expected: str, undone: str, changed: str) -> list[str]:
    return [
        row.title,
        str(row.trips),
        str(row.states.get("CONFIRMED", 0)),
        str(row.states.get("CANCELLED", 0)),
        str(row.states.get("NEEDS_ATTENTION", 0)),
        undone,
        changed,
        str(row.retries),
        _ms(row.median_ms),
        _ms(row.p95_ms),
        expected,
    ]


def format_demo_scenarios(summary: demo.DemoSummary) -> str:
    """The outcome table: one line per scenario, then all of them. 'undone' is the compensation path,
    'then' how a change or cancellation of the booked trip ended,
    'retried' the calls sent again after a transient fault or a lost reply, latency from acceptance to
    the terminal state."""
    rows = []
    for row in summary.rows:
        good = row.trips - row.surprises
        expected = f"{good}/{row.trips}" + ("" if good == row.trips else "  <--")
        rows.append(_scenario_cells(row, expected=expected, undone=_undone(row), changed=_changed(row)))
    total = summary.total
    done = f"{total.trips - total.surprises}/{total.trips}"
    rows.append(_scenario_cells(total, expected=done, undone="", changed=""))
    return format_table(SCENARIO_HEADERS, rows, right=(1, 2, 3, 4, 7, 8, 9, 10))


def format_demo_paths(summary: demo.DemoSummary) -> str:
    """Each compensation path seen: how many trips took it, and the cancel steps it ran, in order."""
    rows = [[PATH_LABELS.get(p.path, p.path), str(p.trips), p.steps] for p in summary.paths]
    return format_table(("compensation path", "trips", "steps run (in parallel: a+b)"), rows, right=(1,))


def format_demo_surprises(summary: demo.DemoSummary, *, limit: int = 10) -> str:
    rows = [
        [r.planned.trip_id, f"{r.planned.scenario.expect}/{r.planned.scenario.path}", f"{r.state}/{r.path}", reason]
        for r in summary.surprises[:limit]
        for reason in [r.error or (r.trip.failure_reason if r.trip is not None else "")]
    ]
    return format_table(("trip", "expected", "got", "reason"), rows)


def format_audit_line(report: AuditReport) -> str:
    """The demo's audit in one line."""
    return (
        f"audit: {format_trip_counts(report.trips_by_state)}; "
        f"{_count(len(report.violations), 'violation')}, {_count(report.orphaned_holds, 'orphaned hold')}"
    )


def format_demo_verdict(summary: demo.DemoSummary) -> str:
    """One line: PASS or FAIL, and why."""
    total = summary.total
    if summary.ok:
        paths = len(summary.paths_seen)
        return (
            f"PASS  {total.trips}/{total.trips} trips ended as their scenario expects, "
            f"{paths} compensation paths ran, 0 orphaned holds, 0 violations"
        )
    return "FAIL  " + "; ".join(summary.problems)


DEMO_LEGEND = (
    "undone: what the compensation released; then: how the change or cancellation after booking ended;\n"
    "retried: calls resent after an injected UNAVAILABLE or a lost reply; p50/p95: milliseconds from\n"
    "acceptance to the final state"
)


def format_demo_report(summary: demo.DemoSummary) -> str:
    """Everything the demo prints once every trip is terminal."""
    parts = [format_demo_scenarios(summary), DEMO_LEGEND, format_demo_paths(summary)]
    if summary.surprises:
        parts.append("trips that did not end as expected:\n" + format_demo_surprises(summary))
    parts.append(format_audit_line(summary.audit))
    if summary.audit.orphans:
        parts.append(format_orphans(summary.audit.orphans))
    if summary.audit.violations:
        parts.append("\n".join(f"  {v}" for v in summary.audit.violations[:20]))
    parts.append(format_demo_verdict(summary))
    return "\n\n".join(parts)
