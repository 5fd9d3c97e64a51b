"""What the engine tells observers while it drives trips: trip state changes and every participant call.

The engine calls four hooks and nothing else: `driving` around a trip's whole run, `accepted` when a new
trip's first write is durable, `state_changed` at each transition, and `calling` around each participant
call (one attempt of one step). `TripEvents` turns them into `TripEvent`s and `StepEvent`s for its
listeners (the Prometheus metrics, and anyone else, such as a WatchTrip stream) and, when tracing is on,
into spans: one for the trip, one child per call, under which the gRPC instrumentation puts its own.

A listener is called on the event loop, inline: it must be quick and must not block. One that raises is
logged and skipped: an observer never changes what happens to a trip.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol

import structlog

from coordinator.participants import Outcome, OutcomeKind
from coordinator.trip import Step, Trip, TripState
from services.kit.clock import Clock

log = structlog.get_logger("tripmesh.events")


@dataclass(frozen=True)
class TripEvent:
    trip_id: str
    state: TripState
    previous: TripState | None  # None: the trip was just accepted (its first write is durable)
    reason: str
    at: datetime


@dataclass(frozen=True)
class StepEvent:
    """A participant call: sent (`outcome` None) or answered (`outcome` and `seconds` set)."""

    trip_id: str
    step: str  # "flight.reserve"
    attempt: int  # 1 for the first call, 2 for the first resend, ...
    at: datetime
    outcome: OutcomeKind | None = None
    code: str = ""
    reason: str = ""
    message: str = ""
    seconds: float | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None


class TripListener(Protocol):
    def on_trip(self, trip: Trip, event: TripEvent) -> None: ...

    def on_step(self, trip: Trip, event: StepEvent) -> None: ...


@dataclass(slots=True)
class Call:
    """One participant call in progress: the engine sets `outcome` when the answer comes."""

    step: Step
    outcome: Outcome | None = None


class Spans(Protocol):
    """Where trips and calls become spans (coordinator/tracing.py); absent when tracing is off."""

    def trip(self, trip: Trip) -> contextlib.AbstractContextManager[object]: ...

    def call(self, trip: Trip, call: Call) -> contextlib.AbstractContextManager[object]: ...


class TripEvents:
    def __init__(self, clock: Clock, listeners: list[TripListener] | None = None, spans: Spans | None = None) -> None:
        self.clock = clock
        self.listeners: list[TripListener] = list(listeners or [])
        self.spans = spans

    def add(self, listener: TripListener) -> None:
        self.listeners.append(listener)

    def remove(self, listener: TripListener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def driving(self, trip: Trip) -> contextlib.AbstractContextManager[object]:
        """Around a trip's whole run in this process (the trace's trip span)."""
        return self.spans.trip(trip) if self.spans is not None else contextlib.nullcontext()

    def accepted(self, trip: Trip) -> None:
        self._trip(trip, TripEvent(trip.trip_id, trip.state, None, trip.failure_reason, self.clock.now()))

    def state_changed(self, trip: Trip, previous: TripState) -> None:
        self._trip(trip, TripEvent(trip.trip_id, trip.state, previous, trip.failure_reason, self.clock.now()))

    def calling(self, trip: Trip, step: Step) -> Calling:
        """Around one participant call; the engine sets the yielded Call's outcome before leaving."""
        return Calling(self, trip, Call(step))

    def sent(self, trip: Trip, call: Call) -> contextlib.AbstractContextManager[object] | None:
        """A call goes out: tell the listeners; its span, entered by the caller, if tracing is on."""
        step = call.step
        self._step(trip, StepEvent(trip.trip_id, step.name, step.attempts, self.clock.now()))
        return self.spans.call(trip, call) if self.spans is not None else None

    def answered(self, trip: Trip, call: Call, seconds: float) -> None:
        outcome, step = call.outcome, call.step
        if outcome is not None:
            event = StepEvent(
                trip.trip_id,
                step.name,
                step.attempts,
                self.clock.now(),
                outcome.kind,
                outcome.code,
                outcome.reason,
                outcome.message,
                seconds,
            )
            self._step(trip, event)

    def _trip(self, trip: Trip, event: TripEvent) -> None:
        for listener in self.listeners:
            try:
                listener.on_trip(trip, event)
            except Exception:  # an observer's bug must not change what happens to the trip
                log.exception("trip_listener_failed", listener=type(listener).__name__)

    def _step(self, trip: Trip, event: StepEvent) -> None:
        for listener in self.listeners:
            try:
                listener.on_step(trip, event)
            except Exception:  # as above
                log.exception("trip_listener_failed", listener=type(listener).__name__)


class Calling:
    """`TripEvents.calling` as a plain object, not a generator: one lives as long as its call, and
    thousands of trips parked on a slow participant each keep one (a generator's frame is larger)."""

    __slots__ = ("call", "events", "span", "started", "trip")

    def __init__(self, events: TripEvents, trip: Trip, call: Call) -> None:
        self.events, self.trip, self.call = events, trip, call
        self.span: contextlib.AbstractContextManager[object] | None = None
        self.started = 0.0

    def __enter__(self) -> Call:
        self.span = self.events.sent(self.trip, self.call)
        if self.span is not None:
            self.span.__enter__()
        self.started = time.perf_counter()
        return self.call

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.span is not None:
            self.span.__exit__(kind, error, tb)
        if kind is None:
            self.events.answered(self.trip, self.call, time.perf_counter() - self.started)
