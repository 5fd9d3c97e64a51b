"""The tripmesh CLI's text: aligned tables built from tripmesh.v1 messages (coordinator/cli_format.py)."""

from __future__ import annotations

import argparse
from collections import Counter

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from coordinator import cli, cli_format, demo
from coordinator.audit import AuditReport, Orphan
from coordinator.demo import TripResult
from tripmesh.v1 import car_service_pb2 as car_pb
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = pytest.mark.unit

T0 = 1_900_000_000  # seconds since the epoch: 2030-03-17T17:46:40Z


def ts(seconds: int, millis: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=millis * 1_000_000)


def eur(minor_units: int) -> common_pb.Money:
    return common_pb.Money(currency_code="EUR", minor_units=minor_units)


def step(
    name: str, status: trip_pb.StepStatus.ValueType, start_ms: int, end_ms: int | None, **extra: object
) -> trip_pb.TripStep:
    message = trip_pb.TripStep(
        name=name, participant=name.split(".")[0], status=status, attempts=1, start_time=ts(T0, start_ms)
    )
    if end_ms is not None:
        message.end_time.CopyFrom(ts(T0, end_ms))
    for key, value in extra.items():
        setattr(message, key, value)
    return message


def cancelled_trip() -> trip_pb.Trip:
    return trip_pb.Trip(
        trip_id="trip-1",
        state=common_pb.TRIP_STATE_CANCELLED,
        customer_id="cust-ada",
        total=eur(61240),
        failure_reason="hotel: sold out",
        create_time=ts(T0),
        update_time=ts(T0 + 1),
        reservations=[
            trip_pb.TripReservation(
                participant="flight",
                reservation_id="trip-1/flight",
                status=common_pb.RESERVATION_STATUS_CANCELLED,
                price=eur(25900),
            ),
            trip_pb.TripReservation(
                participant="hotel", reservation_id="trip-1/hotel", status=common_pb.RESERVATION_STATUS_CANCELLED
            ),
        ],
        steps=[
            step("flight.reserve", trip_pb.STEP_STATUS_SUCCEEDED, 3, 15),
            step(
                "hotel.reserve",
                trip_pb.STEP_STATUS_REFUSED,
                4,
                9,
                attempts=1,
                error_code="RESOURCE_EXHAUSTED",
                error_reason="SOLD_OUT",
                error_message="no standard room left on 2027-03-16",
            ),
            step("flight.cancel", trip_pb.STEP_STATUS_SUCCEEDED, 20, 1260, attempts=3),
            step("hotel.cancel", trip_pb.STEP_STATUS_STARTED, 21, None),
        ],
    )


def test_table_pads_columns_right_aligns_numbers_and_leaves_no_trailing_spaces() -> None:
    text = cli_format.format_table(("#", "name", "note"), [["1", "a", ""], ["10", "long name", "x"]], right=(0,))
    assert text.splitlines() == [
        " #  name       note",
        " 1  a",
        "10  long name  x",
    ]


def test_table_refuses_ragged_rows() -> None:
    with pytest.raises(ValueError, match="one cell per header"):
        cli_format.format_table(("a", "b"), [["1"]])


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (eur(12950), "129.50 EUR"),
        (eur(5), "0.05 EUR"),
        (eur(-250), "-2.50 EUR"),
        (eur(0), "0.00 EUR"),
        (common_pb.Money(), "-"),
    ],
)
def test_money_is_minor_units_never_a_float(money: common_pb.Money, text: str) -> None:
    assert cli_format.format_money(money) == text


def test_enum_labels_drop_the_prefix() -> None:
    assert cli_format.trip_state(common_pb.TRIP_STATE_NEEDS_ATTENTION) == "NEEDS_ATTENTION"
    assert cli_format.step_status(trip_pb.STEP_STATUS_REFUSED) == "REFUSED"
    assert cli_format.reservation_status(common_pb.RESERVATION_STATUS_HELD) == "HELD"
    assert cli_format.trip_state(common_pb.TRIP_STATE_UNSPECIFIED) == "UNSPECIFIED"


def test_time_is_utc_to_the_second_and_unset_is_a_dash() -> None:
    assert cli_format.format_time(ts(T0, 999)) == "2030-03-17T17:46:40Z"
    assert cli_format.format_time(Timestamp()) == "-"


def test_step_table_times_are_relative_to_the_trip_and_errors_read_code_reason_message() -> None:
    assert cli_format.format_steps(cancelled_trip()).splitlines() == [
        "#  step            status     attempts  started ms  duration ms  error",
        "1  flight.reserve  SUCCEEDED         1          +3           12",
        "2  hotel.reserve   REFUSED           1          +4            5  "
        "RESOURCE_EXHAUSTED/SOLD_OUT: no standard room left on 2027-03-16",
        "3  flight.cancel   SUCCEEDED         3         +20         1240",
        "4  hotel.cancel    STARTED           1         +21            -",
    ]


def test_step_duration_prefers_the_recorded_duration() -> None:
    trip = trip_pb.Trip(create_time=ts(T0), steps=[step("notify.reserve", trip_pb.STEP_STATUS_SUCCEEDED, 0, 50)])
    trip.steps[0].duration.CopyFrom(Duration(nanos=42_000_000))
    trip.steps[0].auxiliary = True
    assert cli_format.step_rows(trip) == [["1", "notify.reserve (aux)", "SUCCEEDED", "1", "+0", "42", ""]]


def test_steps_without_a_trip_creation_time_count_from_the_first_step() -> None:
    trip = trip_pb.Trip(
        steps=[
            step("a.reserve", trip_pb.STEP_STATUS_SUCCEEDED, 100, 110),
            step("b.reserve", trip_pb.STEP_STATUS_SUCCEEDED, 40, 90),
        ]
    )
    assert [row[4] for row in cli_format.step_rows(trip)] == ["+60", "+0"]


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"error_code": "UNAVAILABLE"}, "UNAVAILABLE"),
        ({"error_code": "UNAVAILABLE", "error_message": "db down"}, "UNAVAILABLE: db down"),
        ({"error_message": "outcome unknown"}, "outcome unknown"),
        ({}, ""),
    ],
)
def test_step_error_uses_whatever_is_set(fields: dict[str, str], text: str) -> None:
    message = trip_pb.TripStep()
    for key, value in fields.items():
        setattr(message, key, value)
    assert cli_format.step_error(message) == text


def test_trip_shows_summary_reservations_and_steps() -> None:
    text = cli_format.format_trip(cancelled_trip())
    summary, reservations, steps = text.split("\n\n")
    assert summary.splitlines() == [
        "trip      trip-1",
        "state     CANCELLED",
        "customer  cust-ada",
        "total     612.40 EUR",
        "created   2030-03-17T17:46:40Z",
        "updated   2030-03-17T17:46:41Z",
        "reason    hotel: sold out",
    ]
    assert reservations.splitlines() == [
        "participant  reservation    status          price",
        "flight       trip-1/flight  CANCELLED  259.00 EUR",
        "hotel        trip-1/hotel   CANCELLED           -",
    ]
    assert steps == cli_format.format_steps(cancelled_trip())


def test_a_new_trip_says_it_has_nothing_yet() -> None:
    text = cli_format.format_trip(trip_pb.Trip(trip_id="t", state=common_pb.TRIP_STATE_PENDING))
    assert "state     PENDING" in text
    assert "reason" not in text
    assert text.endswith("(no reservations)\n\n(no steps yet)")


def test_trip_list() -> None:
    confirmed = trip_pb.Trip(
        trip_id="trip-2",
        state=common_pb.TRIP_STATE_CONFIRMED,
        customer_id="cust-bo",
        total=eur(100),
        create_time=ts(T0),
    )
    assert cli_format.format_trips([confirmed, cancelled_trip()]).splitlines() == [
        "trip    state      customer       total  steps  created               reason",
        "trip-2  CONFIRMED  cust-bo     1.00 EUR      0  2030-03-17T17:46:40Z",
        "trip-1  CANCELLED  cust-ada  612.40 EUR      4  2030-03-17T17:46:40Z  hotel: sold out",
    ]
    assert cli_format.format_trips([]) == "(no trips)"


def test_endpoint_table() -> None:
    text = cli_format.format_endpoints(
        [
            cli_format.Endpoint("coordinator", "127.0.0.1:50050", "var/coordinator.db", 4242),
            cli_format.Endpoint("smtp-sink", "127.0.0.1:2525", "var/mail/", 77),
        ]
    )
    assert text.splitlines() == [
        "service      address          data                 pid",
        "coordinator  127.0.0.1:50050  var/coordinator.db  4242",
        "smtp-sink    127.0.0.1:2525   var/mail/             77",
    ]


def test_rpc_error_is_code_colon_message_then_details() -> None:
    assert cli_format.format_rpc_error("NOT_FOUND", "no trip t") == "NOT_FOUND: no trip t"
    assert cli_format.format_rpc_error(
        "INVALID_ARGUMENT", "bad request", reason="INVALID_REQUEST", violations=[("flight.passenger_count", "1..9")]
    ).splitlines() == ["INVALID_ARGUMENT: bad request", "  reason: INVALID_REQUEST", "  flight.passenger_count: 1..9"]


# --- the request `tripmesh book` builds from its flags ---------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


BOOK = ("book", "--customer", "cust-ada", "--email", "ada@example.com", "--flight", "TM101-20270315",
        "--payment-method", "pm_ada_visa")  # fmt: skip


def test_book_builds_a_flight_and_hotel_request() -> None:
    args = parse(
        *BOOK,
        "--trip-id", "trip-9", "--return", "TM102-20270322", "--cabin", "premium-economy", "--passengers", "2",
        "--hotel", "lis-alfama", "--room", "deluxe", "--check-in", "2027-03-15", "--check-out", "2027-03-22",
    )  # fmt: skip
    request = cli.build_book_request(args)
    assert request.trip_id == "trip-9"
    assert request.customer.customer_id == "cust-ada"
    assert request.customer.email == "ada@example.com"
    assert request.flight.outbound_flight_id == "TM101-20270315"
    assert request.flight.return_flight_id == "TM102-20270322"
    assert request.flight.cabin == flight_pb.CABIN_PREMIUM_ECONOMY
    assert request.flight.passenger_count == 2
    assert request.hotel.hotel_id == "lis-alfama"
    assert request.hotel.room_type == hotel_pb.ROOM_TYPE_DELUXE
    assert request.hotel.check_in == common_pb.Date(year=2027, month=3, day=15)
    assert request.hotel.check_out == common_pb.Date(year=2027, month=3, day=22)
    assert request.hotel.room_count == 1
    assert request.payment_method_id == "pm_ada_visa"
    assert request.currency_code == "EUR"


def test_book_without_hotel_is_a_flight_only_trip_with_a_generated_id() -> None:
    first, second = cli.build_book_request(parse(*BOOK)), cli.build_book_request(parse(*BOOK))
    assert not first.HasField("hotel")
    assert first.flight.cabin == flight_pb.CABIN_ECONOMY
    assert first.trip_id.startswith("trip-")
    assert first.trip_id != second.trip_id


def test_book_refuses_unknown_names_and_a_hotel_without_dates() -> None:
    with pytest.raises(cli.CliError, match="unknown cabin 'first'; choose one of economy, premium_economy, business"):
        cli.build_book_request(parse(*BOOK, "--cabin", "first"))
    with pytest.raises(cli.CliError, match="unknown cabin 'unspecified'"):
        cli.build_book_request(parse(*BOOK, "--cabin", "unspecified"))
    with pytest.raises(cli.CliError, match="--hotel needs --check-in and --check-out"):
        cli.build_book_request(parse(*BOOK, "--hotel", "lis-alfama"))


def test_parsing_retry_audit_and_a_needs_attention_filter() -> None:
    assert parse("retry", "trip-7").trip_id == "trip-7"
    assert parse("trips", "--state", "needs-attention").state == "needs-attention"
    assert cli._enum_name(common_pb.TripState.keys(), "TRIP_STATE_", "needs-attention") == "TRIP_STATE_NEEDS_ATTENTION"
    assert parse("audit", "--var-dir", "elsewhere").var_dir == "elsewhere"
    demo_args = parse("demo", "--trips", "24", "--seed", "7", "--keep-running")
    assert (demo_args.trips, demo_args.seed, demo_args.keep_running, demo_args.var_dir) == (24, 7, True, None)
    with pytest.raises(SystemExit):
        parse("demo", "--trips", "0")


# --- trips waiting for an operator, and `tripmesh retry` ------------------------------------------------


def stuck_trip() -> trip_pb.Trip:
    return trip_pb.Trip(
        trip_id="trip-3",
        state=common_pb.TRIP_STATE_NEEDS_ATTENTION,
        customer_id="cust-ada",
        total=eur(39600),
        failure_reason="payment.reserve was refused; compensation failed: hotel.cancel kept failing (UNAVAILABLE)",
        create_time=ts(T0),
        update_time=ts(T0 + 30),
        steps=[
            step("flight.cancel", trip_pb.STEP_STATUS_SUCCEEDED, 70, 80),
            step("hotel.cancel", trip_pb.STEP_STATUS_FAILED, 70, 900, attempts=30, error_code="UNAVAILABLE"),
        ],
    )


def test_trips_needing_attention_show_the_reason_the_stuck_step_and_how_to_retry() -> None:
    lines = cli_format.format_trips([stuck_trip()]).splitlines()
    assert lines[0].split() == ["trip", "state", "customer", "total", "steps", "created", "reason"]
    assert lines[1].startswith("trip-3  NEEDS_ATTENTION  cust-ada  396.00 EUR      2  2030-03-17T17:46:40Z  payment")
    assert lines[1].endswith("compensation failed: hotel.cancel kept failing (UNAVAILABLE)")
    assert lines[2:] == [
        "",
        "trip-3 is stuck at hotel.cancel (since 2030-03-17T17:47:10Z)",
        "1 trip needs attention: once the failing participant is back, `tripmesh retry TRIP_ID` sends it on again",
    ]
    two = cli_format.format_trips([stuck_trip(), stuck_trip()])
    assert two.endswith("2 trips need attention: once the failing participant is back, `tripmesh retry TRIP_ID` "
                        "sends one on again")  # fmt: skip
    assert "attention" not in cli_format.format_trips([cancelled_trip()])


def test_retry_says_where_the_trip_went_then_shows_it() -> None:
    done = cancelled_trip()
    text = cli_format.format_retry("NEEDS_ATTENTION", done)
    assert text.startswith("retried trip-1: NEEDS_ATTENTION -> CANCELLED\n\ntrip      trip-1\n")
    assert text.endswith(cli_format.format_steps(done))
    assert cli_format.format_retry("NEEDS_ATTENTION", stuck_trip()).splitlines()[0] == (
        "retried trip-3: still NEEDS_ATTENTION; the failing participant is not back yet"
    )
    going = trip_pb.Trip(trip_id="trip-4", state=common_pb.TRIP_STATE_COMPENSATING)
    assert cli_format.format_retry("NEEDS_ATTENTION", going).splitlines()[0] == (
        "retried trip-4: COMPENSATING (still going; `tripmesh trip trip-4` shows how it ends)"
    )


# --- tripmesh audit -------------------------------------------------------------------------------------


def clean_report() -> AuditReport:
    return AuditReport(
        violations=[],
        trips_by_state={"CANCELLED": 2, "CONFIRMED": 3},
        holds={
            "flight": {"CONFIRMED": 3, "CANCELLED": 2},
            "hotel": {"CONFIRMED": 2, "CANCELLED": 1, "EXPIRED": 1},
            "payment": {"CONFIRMED": 3},
        },
    )


def test_audit_of_a_clean_mesh_counts_trips_and_reservations() -> None:
    assert cli_format.format_audit(clean_report(), "var/: coordinator.db, flight.db").splitlines() == [
        "audit (read-only) of var/: coordinator.db, flight.db",
        "",
        "5 trips: 3 CONFIRMED, 2 CANCELLED",
        "",
        "participant  HELD  CONFIRMED  CANCELLED  EXPIRED  total",
        "flight          0          3          2        0      5",
        "hotel           0          2          1        1      4",
        "payment         0          3          0        0      3",
        "",
        "orphaned holds: 0",
        "",
        "OK    no violation of I1-I6 (5 trips, 12 reservations)",
    ]


def test_audit_names_every_orphan_and_violation() -> None:
    report = AuditReport(
        violations=["I3: cancelled trip t-1 still has hotel HELD", "I4: hotel still HELD t-1/hotel for CANCELLED trip"],
        trips_by_state={"CANCELLED": 1},
        holds={"hotel": {"HELD": 1}},
        orphans=[Orphan("hotel", "t-1/hotel", "HELD", "CANCELLED")],
    )
    text = cli_format.format_audit(report, "var/")
    assert (
        "orphaned holds: 1\nparticipant  reservation  status  trip\nhotel        t-1/hotel    HELD    CANCELLED" in text
    )
    assert text.endswith(
        "FAIL  2 violations of I1-I6:\n"
        "  I3: cancelled trip t-1 still has hotel HELD\n"
        "  I4: hotel still HELD t-1/hotel for CANCELLED trip"
    )
    assert cli_format.format_audit_line(report) == "audit: 1 trip: 1 CANCELLED; 2 violations, 1 orphaned hold"


def test_audit_of_an_empty_mesh() -> None:
    empty = AuditReport(violations=[], trips_by_state={}, holds={"flight": {}})
    lines = cli_format.format_audit(empty, "var/").splitlines()
    assert lines[2] == "0 trips"
    assert lines[4:6] == ["participant  HELD  CONFIRMED  total", "flight          0          0      0"]


# --- tripmesh demo --------------------------------------------------------------------------------------


def test_fault_rules_read_as_sentences() -> None:
    describe = cli_format.describe_fault
    assert describe({"method": "Reserve", "latency_ms": 30}) == "+30 ms"
    assert describe({"method": "Reserve", "error_rate": 0.15}) == "15% UNAVAILABLE"
    assert describe({"method": "Cancel", "error_rate": 0.05, "when": "after"}) == (
        "5% UNAVAILABLE after the call took effect (a lost reply)"
    )
    assert describe({"method": "Confirm", "match": "-x/", "code": "FAILED_PRECONDITION", "reason": "HOLD_EXPIRED"}) == (
        "FAILED_PRECONDITION/HOLD_EXPIRED for requests containing '-x/'"
    )
    assert describe({"method": "*", "outage": [5, 10], "latency_ms": 100, "error_rate": 0.5}) == (
        "+100 ms 50% UNAVAILABLE from 5 s to 10 s after start"
    )
    table = cli_format.format_faults({"hotel": [{"method": "Reserve", "latency_ms": 30}], "payment": []})
    assert table.splitlines() == ["service  method   fault", "hotel    Reserve  +30 ms"]


SCENARIO = {s.key: s for s in demo.SCENARIOS}


def demo_trip(
    key: str, number: int, state: str, cancelled: tuple[str, ...], millis: int, retries: int = 0
) -> TripResult:
    """A finished demo trip: `cancelled` names the participants whose cancel ran; it took `millis`."""
    steps = [
        trip_pb.TripStep(name=f"{p}.cancel", participant=p, action=trip_pb.STEP_ACTION_CANCEL, attempts=1)
        for p in cancelled
    ]
    steps.insert(0, trip_pb.TripStep(name="flight.reserve", participant="flight", attempts=1 + retries))
    trip = trip_pb.Trip(
        trip_id=f"demo-ab12-{number:03d}-{key}",
        state=common_pb.TripState.Value(f"TRIP_STATE_{state}"),
        create_time=ts(T0),
        update_time=ts(T0, millis),
        steps=steps,
    )
    planned = demo.PlannedTrip(SCENARIO[key], trip_pb.BookTripRequest(trip_id=trip.trip_id))
    return TripResult(planned, trip)


FULL = ("payment", "notify", "flight", "hotel")


def demo_summary(*extra: TripResult, orphans: list[Orphan] | None = None) -> demo.DemoSummary:
    results = [
        demo_trip("round-trip", 1, "CONFIRMED", (), 400, retries=2),
        demo_trip("round-trip", 2, "CONFIRMED", (), 600),
        demo_trip("hotel-sold-out", 3, "CANCELLED", ("flight",), 180, retries=1),
        demo_trip("card-declined", 4, "CANCELLED", ("notify", "flight", "hotel"), 300),
        demo_trip("hotel-hold-expired", 5, "CANCELLED", FULL, 520),
        *extra,
    ]
    violations = [f"I4: {o.participant} still HELD {o.reservation_id} for CANCELLED trip" for o in orphans or []]
    report = AuditReport(
        violations=violations,
        trips_by_state=dict(Counter(r.state for r in results)),
        holds={},
        orphans=orphans or [],
    )
    return demo.summarize(results, report, seconds=2.5)


def cancelled_after_booking(number: int) -> TripResult:
    """A demo trip booked, then cancelled by its customer: its cancels are the cancellation's, not a
    compensation."""
    done = demo_trip("cancelled", number, "CANCELLED", ("flight", "hotel"), 900)
    assert done.trip is not None
    done.trip.changes.add(
        change_id="cancel", kind=trip_pb.TRIP_CHANGE_KIND_CANCEL, outcome=trip_pb.TRIP_CHANGE_OUTCOME_CANCELLED
    )
    planned = demo.PlannedTrip(done.planned.scenario, done.planned.request, trip_pb.CancelTripRequest())
    return TripResult(planned, done.trip)


def test_demo_scenario_table_counts_outcomes_paths_retries_and_latency() -> None:
    assert cli_format.format_demo_scenarios(demo_summary(cancelled_after_booking(6))).splitlines() == [
        "scenario                       trips  CONFIRMED  CANCELLED  NEEDS_ATTENTION  undone          then   "
        "    retried  p50 ms  p95 ms  as expected",
        "round trip + hotel                 2          2          0                0  none            -      "
        "          2     500     600          2/2",
        "hotel sold out (3 suites)          1          0          1                0  flight only     -      "
        "          1     180     180          1/1",
        "card declined                      1          0          1                0  flight + hotel  -      "
        "          0     300     300          1/1",
        "hotel hold expired at confirm      1          0          1                0  full chain      -      "
        "          0     520     520          1/1",
        "cancelled after booking            1          0          1                0  none            CANCELL"
        "ED        0     900     900          1/1",
        "all                                6          2          4                0                         "
        "          3     460     900          6/6",
    ]


def test_a_change_that_ended_otherwise_is_a_surprise() -> None:
    applied = cancelled_after_booking(7)
    assert applied.as_expected and applied.change == "CANCELLED" and applied.path == demo.PATH_NONE
    assert applied.trip is not None
    applied.trip.changes[0].outcome = trip_pb.TRIP_CHANGE_OUTCOME_IN_PROGRESS
    assert not applied.terminal and not applied.as_expected
    never_sent = TripResult(applied.planned, trip_pb.Trip(state=common_pb.TRIP_STATE_CONFIRMED), "NOT_FOUND: gone")
    assert never_sent.change == "" and not never_sent.as_expected


def test_demo_paths_table_and_a_passing_verdict() -> None:
    summary = demo_summary()
    assert cli_format.format_demo_paths(summary).splitlines() == [
        "compensation path  trips  steps run (in parallel: a+b)",
        "none                   2  -",
        "flight only            1  flight",
        "flight + hotel         1  notify, then flight+hotel",
        "full chain             1  payment+notify, then flight+hotel",
    ]
    assert summary.ok
    assert cli_format.format_demo_verdict(summary) == (
        "PASS  5/5 trips ended as their scenario expects, 4 compensation paths ran, 0 orphaned holds, 0 violations"
    )
    report = cli_format.format_demo_report(summary)
    assert "audit: 5 trips: 2 CONFIRMED, 3 CANCELLED; 0 violations, 0 orphaned holds" in report
    assert report.endswith(cli_format.format_demo_verdict(summary))


def test_demo_verdict_fails_on_a_surprise_or_an_orphan_and_says_which() -> None:
    wrong = demo_trip("card-declined", 6, "CONFIRMED", (), 250)
    orphan = Orphan("hotel", "demo-ab12-004-card-declined/hotel", "HELD", "CANCELLED")
    summary = demo_summary(wrong, orphans=[orphan])
    assert not summary.ok
    assert cli_format.format_demo_verdict(summary) == (
        "FAIL  1 of 2 'card declined' trips did not end as expected; 1 orphaned holds; 1 invariant violations"
    )
    table = cli_format.format_demo_scenarios(summary)
    assert "card declined                      2          1          1                0  flight + hotel | none" in table
    assert table.splitlines()[3].endswith("1/2  <--")
    report = cli_format.format_demo_report(summary)
    assert "trips that did not end as expected:\ntrip" in report
    assert "demo-ab12-006-card-declined  CANCELLED/flight+hotel  CONFIRMED/none" in report
    assert "hotel        demo-ab12-004-card-declined/hotel  HELD    CANCELLED" in report


# --- `tripmesh change` and `tripmesh cancel` -------------------------------------------------------------


def booked_request() -> trip_pb.BookTripRequest:
    request = cli.build_book_request(
        parse(
            *BOOK,
            "--trip-id",
            "trip-8",
            "--return",
            "TM102-20270322",
            "--passengers",
            "2",
            "--seats",
            "14A,14C",
            "--hotel",
            "lis-alfama",
            "--check-in",
            "2027-03-15",
            "--check-out",
            "2027-03-22",
        )
    )
    assert list(request.flight.seats) == ["14A", "14C"] and not request.HasField("car")
    return request


def test_book_rents_a_car_with_its_options() -> None:
    request = cli.build_book_request(
        parse(*BOOK, "--car-city", "Lisbon", "--pick-up", "2027-03-15", "--drop-off", "2027-03-18")
    )
    assert request.car == trip_pb.TripCar(
        city="Lisbon",
        car_class=car_pb.CAR_CLASS_COMPACT,
        pick_up_date=common_pb.Date(year=2027, month=3, day=15),
        drop_off_date=common_pb.Date(year=2027, month=3, day=18),
    )


def test_change_sends_each_part_it_touches_whole_from_the_trip_as_booked() -> None:
    booked = booked_request()
    longer = cli.build_change_request(parse("change", "trip-8", "--check-out", "2027-03-24"), booked)
    assert longer.trip_id == "trip-8" and longer.change_id.startswith("change-")
    assert not longer.HasField("flight") and not longer.HasField("car")
    expected = trip_pb.TripHotel()
    expected.CopyFrom(booked.hotel)
    expected.check_out.day = 24
    assert longer.hotel == expected

    seats = cli.build_change_request(parse("change", "trip-8", "--change-id", "c2", "--seats", "20D,20E"), booked)
    assert seats.change_id == "c2" and list(seats.flight.seats) == ["20D", "20E"]
    assert seats.flight.outbound_flight_id == booked.flight.outbound_flight_id and seats.flight.passenger_count == 2
    three = cli.build_change_request(parse("change", "trip-8", "--passengers", "3"), booked)
    assert three.flight.passenger_count == 3 and not three.flight.seats  # the named seats were for two

    car = cli.build_change_request(
        parse(
            "change",
            "trip-8",
            "--car-city",
            "Lisbon",
            "--pick-up",
            "2027-03-15",
            "--drop-off",
            "2027-03-17",
            "--drop-hotel",
        ),
        booked,
    )
    assert car.drop_hotel and not car.HasField("hotel") and car.car.car_class == car_pb.CAR_CLASS_COMPACT


def test_change_refuses_nothing_to_change_and_a_drop_with_options() -> None:
    booked = booked_request()
    with pytest.raises(cli.CliError, match="nothing to change"):
        cli.build_change_request(parse("change", "trip-8"), booked)
    with pytest.raises(cli.CliError, match="--drop-hotel cannot go with hotel options"):
        cli.build_change_request(parse("change", "trip-8", "--drop-hotel", "--rooms", "2"), booked)
    with pytest.raises(cli.CliError, match="unknown car class 'van'"):
        cli.build_change_request(parse("change", "trip-8", "--car-class", "van"), booked)
    assert parse("cancel", "trip-8").trip_id == "trip-8"


def changed_trip(outcome: int, reason: str = "") -> tuple[trip_pb.Trip, trip_pb.TripChange]:
    trip = cancelled_trip()
    trip.state = common_pb.TRIP_STATE_CONFIRMED
    change = trip_pb.TripChange(
        change_id="longer",
        kind=trip_pb.TRIP_CHANGE_KIND_CHANGE,
        revision=2,
        outcome=outcome,  # type: ignore[arg-type]
        reason=reason,
        parts=["hotel"],
        dropped=["hotel"],
        price_difference=eur(21000),
    )
    trip.changes.append(change)
    trip.paid.CopyFrom(eur(60600))
    return trip, change


def test_change_says_how_it_ended_then_shows_the_trip_with_its_changes() -> None:
    trip, change = changed_trip(trip_pb.TRIP_CHANGE_OUTCOME_APPLIED)
    text = cli_format.format_change(trip, change)
    assert text.startswith(
        "change longer of trip-1: APPLIED (hotel reserved anew; difference 210.00 EUR)\n\ntrip      trip-1\n"
    )
    assert "paid      606.00 EUR" in text
    assert "change  kind    revision  outcome  reserved  let go  difference  reason\n" in text
    assert "longer  change         2  APPLIED  hotel     hotel   210.00 EUR\n" in text
    assert text.endswith(cli_format.format_steps(trip))
    reverted, change = changed_trip(trip_pb.TRIP_CHANGE_OUTCOME_REVERTED, "hotel.reserve@2 was refused (SOLD_OUT)")
    assert cli_format.format_change(reverted, change).splitlines()[0] == (
        "change longer of trip-1: REVERTED, the trip stands as it was: hotel.reserve@2 was refused (SOLD_OUT)"
    )
    assert "paid " not in cli_format.format_trip(cancelled_trip())  # a trip never changed reads as before


def test_cancel_says_where_the_trip_went() -> None:
    done = cancelled_trip()
    done.failure_reason = "cancelled by the customer"
    assert cli_format.format_cancel(done).splitlines()[0] == ("cancelled trip-1: cancelled by the customer; paid -")
    stuck = stuck_trip()
    assert cli_format.format_cancel(stuck).splitlines()[0] == (
        "cancelling trip-3 is stuck: NEEDS_ATTENTION; `tripmesh retry trip-3` sends it on"
    )
