"""A trip as the dashboard draws it: one lane per participant, one bar per step, the decision as a line.

Pure: a `Trip` message (from GetTrip or rebuilt from WatchTrip) and the time now in, plain values out;
the templates only place them. Positions are percentages of the trip's span, times are milliseconds
from the trip's creation. A step still running is drawn up to `now`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

LANES = ("flight", "hotel", "car", "payment", "notify")
MIN_BAR_PERCENT = 0.6  # a 1 ms step is still a visible sliver
NARROW_PERCENT = 10.0  # narrower than this, a bar's label goes beside it
FINISHED = frozenset({common_pb.TRIP_STATE_CONFIRMED, common_pb.TRIP_STATE_CANCELLED})
RUNNING = frozenset(
    {
        common_pb.TRIP_STATE_PENDING,
        common_pb.TRIP_STATE_RESERVING,
        common_pb.TRIP_STATE_CONFIRMING,
        common_pb.TRIP_STATE_COMPENSATING,
        common_pb.TRIP_STATE_CHANGING,
        common_pb.TRIP_STATE_CHANGE_CONFIRMING,
        common_pb.TRIP_STATE_CHANGE_REVERTING,
        common_pb.TRIP_STATE_CANCELLING,
    }
)
ACTIONS = {
    trip_pb.STEP_ACTION_RESERVE: "reserve",
    trip_pb.STEP_ACTION_CONFIRM: "confirm",
    trip_pb.STEP_ACTION_CANCEL: "cancel",
}
STATUSES = {
    trip_pb.STEP_STATUS_STARTED: "running",
    trip_pb.STEP_STATUS_SUCCEEDED: "succeeded",
    trip_pb.STEP_STATUS_REFUSED: "refused",
    trip_pb.STEP_STATUS_FAILED: "failed",
}


def state_name(state: int) -> str:
    return common_pb.TripState.Name(state).removeprefix("TRIP_STATE_")  # type: ignore[arg-type]


def when(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True)
class Bar:
    name: str  # "hotel.cancel"
    action: str  # reserve, confirm, cancel
    status: str  # running, succeeded, refused, failed
    seq: int
    attempts: int
    start_ms: float
    duration_ms: float | None  # None while running
    left: float  # percent
    width: float  # percent
    error: str
    undo_order: int  # 1, 2, ... for compensations in the order they ran (a parallel pair shares one); 0 otherwise
    room: float = 100.0  # percent free to the right of the bar, up to the next bar of its lane

    @property
    def narrow(self) -> bool:
        """Too narrow for its label, which then goes to the right of the bar (if there is room: else
        only its tooltip and the steps table tell)."""
        return self.width < NARROW_PERCENT

    @property
    def label_fits(self) -> bool:
        return not self.narrow or self.room >= NARROW_PERCENT

    @property
    def label(self) -> str:
        if self.duration_ms is None:
            return f"{self.action} …"
        return f"{self.action} {fmt_ms(self.duration_ms)}"

    @property
    def tooltip(self) -> str:
        parts = [f"{self.name}: {self.status}", f"starts +{fmt_ms(self.start_ms)}"]
        parts.append("running" if self.duration_ms is None else f"took {fmt_ms(self.duration_ms)}")
        if self.attempts > 1:
            parts.append(f"{self.attempts} attempts")
        if self.error:
            parts.append(self.error)
        return " · ".join(parts)


@dataclass(frozen=True)
class Lane:
    participant: str
    auxiliary: bool
    bars: list[Bar]


@dataclass(frozen=True)
class Marker:
    kind: str  # commit, compensate
    label: str
    at_ms: float
    left: float


@dataclass(frozen=True)
class Timeline:
    lanes: list[Lane]
    markers: list[Marker]
    ticks: list[tuple[float, str]]  # (percent, label)
    span_ms: float
    running: bool

    @property
    def bars(self) -> list[Bar]:
        return sorted((b for lane in self.lanes for b in lane.bars), key=lambda b: b.seq)


def fmt_ms(ms: float) -> str:
    if ms == 0:
        return "0 ms"
    if ms >= 1000:
        return f"{ms / 1000:,.1f} s"
    return f"{ms:,.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def step_error(step: trip_pb.TripStep) -> str:
    code = "/".join(part for part in (step.error_code, step.error_reason) if part)
    return f"{code}: {step.error_message}" if step.error_message else code


def nice_step(span: float) -> float:
    """A round tick interval giving about five ticks over `span` ms (1, 2, 5 times 10^n)."""
    raw = max(span / 5, 0.001)
    power = 10 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def build(trip: trip_pb.Trip, now: datetime) -> Timeline:
    start = when(trip.create_time)
    running = trip.state in RUNNING
    ends: list[float] = [0.0]
    spans: dict[str, tuple[float, float | None]] = {}
    for step in trip.steps:
        begin = (when(step.start_time) - start).total_seconds() * 1000
        end = (when(step.end_time) - start).total_seconds() * 1000 if step.HasField("end_time") else None
        spans[step.name] = (begin, end)
        ends.append(begin if end is None else end)
    now_ms = (now - start).total_seconds() * 1000
    if running:
        ends.append(now_ms)
    span = max(max(ends), 1.0)

    def pct(ms: float) -> float:
        return min(100.0, max(0.0, ms / span * 100))

    undo = _undo_waves(trip, spans)
    lanes: dict[str, list[Bar]] = {}
    auxiliary: set[str] = set()
    for seq, step in enumerate(trip.steps, 1):
        begin, end = spans[step.name]
        status = STATUSES.get(step.status, "running")
        shown_end = end if end is not None else (max(now_ms, begin) if running else begin)
        bar = Bar(
            name=step.name,
            action=ACTIONS.get(step.action, "?"),
            status=status if end is not None or running else "stalled",
            seq=seq,
            attempts=step.attempts,
            start_ms=begin,
            duration_ms=None if end is None else end - begin,
            left=pct(begin),
            width=max(MIN_BAR_PERCENT, pct(shown_end) - pct(begin)),
            error=step_error(step),
            undo_order=undo.get(step.name, 0),
        )
        lanes.setdefault(step.participant, []).append(bar)
        if step.auxiliary:
            auxiliary.add(step.participant)
    order = [p for p in LANES if p in lanes] + sorted(p for p in lanes if p not in LANES)
    tick = nice_step(span)
    ticks = [(pct(i * tick), fmt_ms(i * tick)) for i in range(int(span // tick) + 1)]
    return Timeline(
        lanes=[Lane(p, p in auxiliary, _with_room(lanes[p])) for p in order],
        markers=_markers(trip, spans, pct),
        ticks=ticks,
        span_ms=span,
        running=running,
    )


def _with_room(bars: list[Bar]) -> list[Bar]:
    ordered = sorted(bars, key=lambda b: b.left)
    rooms = [nxt.left - (bar.left + bar.width) for bar, nxt in itertools.pairwise(ordered)]
    rooms.append(100.0 - (ordered[-1].left + ordered[-1].width) if ordered else 100.0)
    return [replace(bar, room=room) for bar, room in zip(ordered, rooms, strict=True)]


def _undo_waves(trip: trip_pb.Trip, spans: dict[str, tuple[float, float | None]]) -> dict[str, int]:
    """Compensations numbered in the order they ran: cancels sent together (one started before another
    of its wave ended) share a number, so reverse order of reservation reads 1, then 2 for a parallel pair."""
    cancels = sorted((s.name for s in trip.steps if s.action == trip_pb.STEP_ACTION_CANCEL), key=lambda n: spans[n][0])
    waves: dict[str, int] = {}
    wave, wave_end = 0, -math.inf
    for name in cancels:
        begin, end = spans[name]
        if begin >= wave_end:
            wave, wave_end = wave + 1, math.inf if end is None else end
        else:
            wave_end = min(wave_end, math.inf if end is None else end)
        waves[name] = wave
    return waves


def _markers(
    trip: trip_pb.Trip, spans: dict[str, tuple[float, float | None]], pct: Callable[[float], float]
) -> list[Marker]:
    """The commit decision is durable with the first Confirm's intent; the decision to undo, with the
    first Cancel's."""
    markers = []
    for action, kind, label in (
        (trip_pb.STEP_ACTION_CONFIRM, "commit", "commit decision"),
        (trip_pb.STEP_ACTION_CANCEL, "compensate", "compensate"),
    ):
        starts = [spans[s.name][0] for s in trip.steps if s.action == action]
        if starts:
            at = min(starts)
            markers.append(Marker(kind, label, at, pct(at)))
    return markers
