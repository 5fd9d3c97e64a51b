"""coordinator/dashboard/timeline.py: where bars, lines and ticks go, from a Trip message (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from coordinator.dashboard import timeline
from coordinator.dashboard.client import apply
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

T0 = datetime(2027, 3, 1, tzinfo=UTC)
ACTION = {"reserve": trip_pb.STEP_ACTION_RESERVE, "confirm": trip_pb.STEP_ACTION_CONFIRM,
          "cancel": trip_pb.STEP_ACTION_CANCEL}  # fmt: skip


def ts(ms: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(T0 + timedelta(milliseconds=ms))
    return stamp


def step(name: str, start: float, end: float | None, status: int = trip_pb.STEP_STATUS_SUCCEEDED, attempts: int = 1):  # type: ignore[no-untyped-def]
    participant, action = name.split(".")
    message = trip_pb.TripStep(name=name, participant=participant, action=ACTION[action], status=status,
                               attempts=attempts, start_time=ts(start), auxiliary=participant == "notify")  # fmt: skip
    if end is not None:
        message.end_time.CopyFrom(ts(end))
    return message


def trip(state: int, *steps: trip_pb.TripStep) -> trip_pb.Trip:
    return trip_pb.Trip(trip_id="t-1", state=state, create_time=ts(0), update_time=ts(200), steps=list(steps))


DECLINED = trip(
    common_pb.TRIP_STATE_CANCELLED,
    step("flight.reserve", 0, 20),
    step("hotel.reserve", 0, 50),
    step("payment.reserve", 50, 60, trip_pb.STEP_STATUS_REFUSED),
    step("notify.reserve", 50, 60),
    step("notify.cancel", 70, 80),
    step("flight.cancel", 81, 100),
    step("hotel.cancel", 81, 90, attempts=3),
)


def test_bars_sit_in_their_lanes_at_their_times_and_compensations_are_numbered_in_waves() -> None:
    drawn = timeline.build(DECLINED, T0 + timedelta(seconds=9))
    assert [lane.participant for lane in drawn.lanes] == ["flight", "hotel", "payment", "notify"]
    assert drawn.span_ms == 100 and not drawn.running
    bars = {b.name: b for b in drawn.bars}
    assert (bars["hotel.reserve"].left, bars["hotel.reserve"].width, bars["hotel.reserve"].duration_ms) == (0, 50, 50)
    assert bars["payment.reserve"].status == "refused"
    assert {n: b.undo_order for n, b in bars.items() if b.action == "cancel"} == {
        "notify.cancel": 1, "flight.cancel": 2, "hotel.cancel": 2,
    }  # fmt: skip
    assert bars["hotel.cancel"].attempts == 3 and "3 attempts" in bars["hotel.cancel"].tooltip
    assert [(m.kind, m.at_ms) for m in drawn.markers] == [("compensate", 70)]
    assert drawn.lanes[3].auxiliary and not drawn.lanes[0].auxiliary
    assert [label for _left, label in drawn.ticks] == ["0 ms", "20 ms", "40 ms", "60 ms", "80 ms", "100 ms"]


def test_a_running_step_grows_to_now_and_a_narrow_bar_labels_itself_beside_if_there_is_room() -> None:
    running = trip(common_pb.TRIP_STATE_RESERVING, step("flight.reserve", 0, 1),
                   step("hotel.reserve", 0, None, trip_pb.STEP_STATUS_STARTED))  # fmt: skip
    drawn = timeline.build(running, T0 + timedelta(milliseconds=400))
    bars = {b.name: b for b in drawn.bars}
    assert drawn.running and drawn.span_ms == 400
    assert bars["hotel.reserve"].status == "running" and bars["hotel.reserve"].width == 100
    assert bars["hotel.reserve"].label == "reserve …"
    assert bars["flight.reserve"].narrow and bars["flight.reserve"].label_fits  # a 1 ms sliver, room after it
    assert bars["flight.reserve"].width == timeline.MIN_BAR_PERCENT


def test_the_commit_line_is_at_the_first_confirm() -> None:
    confirmed = trip(common_pb.TRIP_STATE_CONFIRMED, step("flight.reserve", 0, 10), step("flight.confirm", 30, 40),
                     step("payment.confirm", 45, 50))  # fmt: skip
    assert [(m.kind, m.at_ms) for m in timeline.build(confirmed, T0).markers] == [("commit", 30)]


def test_a_watch_client_applies_steps_and_states_to_its_snapshot() -> None:
    held = apply(None, trip_pb.WatchTripResponse(snapshot=trip(common_pb.TRIP_STATE_RESERVING)))
    sent = step("flight.reserve", 0, None, trip_pb.STEP_STATUS_STARTED)
    held = apply(held, trip_pb.WatchTripResponse(step=trip_pb.TripStepEvent(step=sent, trip_state=held.state)))
    done = step("flight.reserve", 0, 12)
    held = apply(held, trip_pb.WatchTripResponse(step=trip_pb.TripStepEvent(step=done, trip_state=held.state)))
    moved = trip_pb.TripStateEvent(previous_state=held.state, state=common_pb.TRIP_STATE_CANCELLED,
                                   failure_reason="why", event_time=ts(20))  # fmt: skip
    held = apply(held, trip_pb.WatchTripResponse(state=moved))
    assert [s.status for s in held.steps] == [trip_pb.STEP_STATUS_SUCCEEDED]
    assert (held.state, held.failure_reason) == (common_pb.TRIP_STATE_CANCELLED, "why")


def test_times_read_as_milliseconds_then_seconds() -> None:
    assert [timeline.fmt_ms(v) for v in (0, 2.34, 45.6, 999, 1500, 16000)] == [
        "0 ms", "2.3 ms", "46 ms", "999 ms", "1.5 s", "16.0 s",
    ]  # fmt: skip
