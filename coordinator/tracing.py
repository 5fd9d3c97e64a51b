"""The coordinator's spans: one for each trip it drives, one child for each participant call.

A trip booked through BookTrip is driven by a task started inside the BookTrip call, so its span is a
child of the BookTrip server span (and of the client's trace, if the client sends one). A trip resumed
after a crash, or by RetryTrip, starts a new trace; every span carries `tripmesh.trip_id`, so a search
by trip finds them all. Under each call span the gRPC instrumentation adds its client span, and the
participant its server span: one trace holds the coordinator and all four services.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from coordinator.events import Call
from coordinator.participants import OutcomeKind
from coordinator.trip import Trip, TripState
from services.kit.tracing import TRIP_ID_ATTRIBUTE


class TripSpans:
    """`Spans` for coordinator/events.py, from one tracer."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    @contextlib.contextmanager
    def trip(self, trip: Trip) -> Iterator[object]:
        attributes = {
            TRIP_ID_ATTRIBUTE: trip.trip_id,
            "tripmesh.customer_id": trip.request.customer_id,
            "tripmesh.trip.state_at_start": trip.state.value,
        }
        with self.tracer.start_as_current_span("tripmesh.trip", kind=SpanKind.INTERNAL, attributes=attributes) as span:
            yield span
            span.set_attribute("tripmesh.trip.state", trip.state.value)
            if trip.failure_reason:
                span.set_attribute("tripmesh.trip.failure_reason", trip.failure_reason)
            if trip.state is TripState.NEEDS_ATTENTION:
                span.set_status(Status(StatusCode.ERROR, trip.failure_reason or "needs attention"))

    @contextlib.contextmanager
    def call(self, trip: Trip, call: Call) -> Iterator[object]:
        attributes: dict[str, str | int] = {
            TRIP_ID_ATTRIBUTE: trip.trip_id,
            "tripmesh.step": call.step.name,
            "tripmesh.attempt": call.step.attempts,
        }
        with self.tracer.start_as_current_span(call.step.name, kind=SpanKind.INTERNAL, attributes=attributes) as span:
            yield span
            outcome = call.outcome
            if outcome is None:
                return
            span.set_attribute("tripmesh.outcome", outcome.kind.value)
            if outcome.kind is not OutcomeKind.OK:
                span.set_attribute("rpc.grpc.status_code_name", outcome.code)
                if outcome.reason:
                    span.set_attribute("tripmesh.reason", outcome.reason)
                described = f"{outcome.kind.value} {outcome.code} {outcome.reason}".strip()
                span.set_status(Status(StatusCode.ERROR, described))
