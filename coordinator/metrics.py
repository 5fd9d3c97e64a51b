"""The coordinator's Prometheus metrics: a listener on the engine's events, plus gauges read when scraped.

Counters and histograms (since this process started, as Prometheus expects):
- tripmesh_trips_started_total                       trips accepted (first write durable)
- tripmesh_trips_finished_total{state}               confirmed / cancelled / needs_attention
- tripmesh_trip_duration_seconds{state}              acceptance to that state
- tripmesh_compensations_total                       trips that began undoing their steps
- tripmesh_step_duration_seconds{step, outcome}      one participant call, ok/refused/transient/unknown
- tripmesh_step_retries_total{step}                  calls resent after a transient or unknown outcome
Gauges:
- tripmesh_trips_in_flight                           trips this process is driving now
- tripmesh_trips_open{state}                         trips in the step log not confirmed or cancelled,
                                                     read at scrape time (right after a restart)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from coordinator.events import StepEvent, TripEvent
from coordinator.steplog import StepLogStore
from coordinator.trip import Trip, TripState
from services.kit.metrics import LATENCY_BUCKETS, DbGauge, Metrics

TRIP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
FINAL = (TripState.CONFIRMED, TripState.CANCELLED, TripState.NEEDS_ATTENTION)
OPEN = tuple(s for s in TripState if s not in (TripState.CONFIRMED, TripState.CANCELLED))


class TripMetrics:
    """A TripListener that keeps the coordinator's counters and histograms in `metrics.registry`."""

    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.started = Counter("tripmesh_trips_started", "Trips accepted by this coordinator.", registry=registry)
        self.finished = Counter(
            "tripmesh_trips_finished",
            "Trips that reached a final state (a retried NEEDS_ATTENTION trip counts again when it ends).",
            ["state"],
            registry=registry,
        )
        self.duration = Histogram(
            "tripmesh_trip_duration_seconds",
            "Time from a trip's acceptance to its final state.",
            ["state"],
            buckets=TRIP_BUCKETS,
            registry=registry,
        )
        self.compensations = Counter(
            "tripmesh_compensations", "Trips that began undoing their steps (compensating).", registry=registry
        )
        self.step_seconds = Histogram(
            "tripmesh_step_duration_seconds",
            "One participant call (one attempt of a saga step), by step and outcome.",
            ["step", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "tripmesh_step_retries",
            "Participant calls resent after a transient or unknown outcome, by step.",
            ["step"],
            registry=registry,
        )
        for state in FINAL:  # present from the start, so rate() sees the first trip
            self.finished.labels(state.value.lower())

    def on_trip(self, trip: Trip, event: TripEvent) -> None:
        if event.previous is None:
            self.started.inc()
        elif event.state is TripState.COMPENSATING and event.previous in (TripState.RESERVING, TripState.CONFIRMING):
            self.compensations.inc()
        if event.state in FINAL and not trip.operations:  # a booking's end, not a change's or cancellation's
            state = event.state.value.lower()
            self.finished.labels(state).inc()
            self.duration.labels(state).observe(max(0.0, (event.at - trip.created_at).total_seconds()))

    def on_step(self, trip: Trip, event: StepEvent) -> None:
        step = event.step.partition("@")[0]  # "hotel.reserve@2" counts as hotel.reserve: bounded labels
        if event.outcome is None:
            if event.attempt > 1:
                self.retries.labels(step).inc()
            return
        self.step_seconds.labels(step, event.outcome.value.lower()).observe(event.seconds or 0.0)


def install(metrics: Metrics, store: StepLogStore, in_flight: Callable[[], int]) -> TripMetrics:
    """Register the coordinator's metrics in `metrics` and return the listener to give the engine."""
    listener = TripMetrics(metrics)
    gauge = Gauge("tripmesh_trips_in_flight", "Trips this coordinator is driving now.", registry=metrics.registry)
    gauge.set_function(lambda: float(in_flight()))

    async def open_trips() -> dict[tuple[str, ...], float]:
        return {(state.lower(),): n for state, n in (await store.count_open_by_state()).items()}

    metrics.registry.register(
        DbGauge(
            "tripmesh_trips_open",
            "Trips in the step log that are not confirmed or cancelled, by state (read when scraped).",
            ["state"],
            open_trips,
            asyncio.get_running_loop(),
            always=[(s.value.lower(),) for s in OPEN],
        )
    )
    return listener
