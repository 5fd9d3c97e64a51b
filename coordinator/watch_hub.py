"""WatchTrip's side of the engine's events (coordinator/events.py): one bounded queue per watcher.

`WatchHub` is a listener of the engine's `TripEvents`, like the metrics. It copies what changed (the
step as the engine has just recorded it, or the trip's new state) into the queues of whoever watches
that trip, and does nothing for a trip nobody watches. It never waits and never grows without bound:
a watcher whose queue is full misses the event, is marked `overflowed`, and re-reads the trip (a fresh
snapshot) before it goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime

from coordinator.events import StepEvent, TripEvent
from coordinator.trip import Step, StepStatus, Trip, TripState

DEFAULT_QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class StepChange:
    trip_id: str
    trip_state: TripState  # the trip's state when it happened
    step: Step  # a copy of the step right after the attempt was sent or answered
    outcome: str  # "" for an attempt just sent; else OK, REFUSED, TRANSIENT or UNKNOWN
    at: datetime

    @property
    def answered(self) -> bool:
        return bool(self.outcome)

    @property
    def final(self) -> bool:
        """No further attempt of this step follows (SUCCEEDED, REFUSED, FAILED)."""
        return self.answered and self.step.status is not StepStatus.STARTED


@dataclass(frozen=True, slots=True)
class StateChange:
    trip_id: str
    previous: TripState
    state: TripState
    reason: str
    at: datetime


Change = StepChange | StateChange


@dataclass(eq=False)
class Subscription:
    trip_id: str
    queue: asyncio.Queue[Change]
    overflowed: bool = False
    dropped: int = 0

    def offer(self, change: Change) -> None:
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True
            self.dropped += 1

    def drain(self) -> None:
        """Forget what is queued and clear the overflow mark (the watcher has just re-read the trip)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.overflowed = False


class WatchHub:
    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subscriptions: dict[str, set[Subscription]] = {}

    @contextmanager
    def subscribe(self, trip_id: str) -> Iterator[Subscription]:
        subscription = Subscription(trip_id, asyncio.Queue(self.queue_size))
        self._subscriptions.setdefault(trip_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscriptions.get(trip_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscriptions[trip_id]

    def watchers(self, trip_id: str) -> int:
        return len(self._subscriptions.get(trip_id, ()))

    def publish(self, change: Change) -> None:
        for subscription in self._subscriptions.get(change.trip_id, ()):
            subscription.offer(change)

    # TripListener (coordinator/events.py)

    def on_trip(self, trip: Trip, event: TripEvent) -> None:
        if event.previous is None or trip.trip_id not in self._subscriptions:
            return  # just accepted (nobody can watch it yet), or nobody watches
        self.publish(StateChange(trip.trip_id, event.previous, event.state, event.reason, event.at))

    def on_step(self, trip: Trip, event: StepEvent) -> None:
        step = trip.steps.get(event.step)
        if step is None or trip.trip_id not in self._subscriptions:
            return
        outcome = event.outcome.value if event.outcome is not None else ""
        self.publish(StepChange(trip.trip_id, trip.state, replace(step), outcome, event.at))
