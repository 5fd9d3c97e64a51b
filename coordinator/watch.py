"""Following one trip as it runs (WatchTrip): a snapshot, then each step event and state change.

Two sources, one stream. A trip this process drives publishes events (coordinator/events.py, through
coordinator/watch_hub.py) to a bounded queue the watcher reads; a trip driven by another replica (or by
nobody: parked in NEEDS_ATTENTION) is read back from the step log every `poll_interval` seconds and what
changed since the last message is sent. The watcher subscribes before it reads the snapshot, so nothing
that happens after the snapshot is missed; what was queued before it is older than the snapshot and is
skipped (a step's events only ever move forward: a higher attempt, or the same attempt's outcome after
its intent). A watcher that falls behind (its queue overflowed) re-reads the trip and sends a new
snapshot.

No proto here: the servicer turns these items into WatchTripResponse messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime

from coordinator.trip import Step, StepStatus, Trip, TripState
from coordinator.watch_hub import Change, StateChange, StepChange, WatchHub

# NEEDS_ATTENTION is not among them: an operator's RetryTrip sends such a trip on.
FINISHED_STATES = frozenset({TripState.CONFIRMED, TripState.CANCELLED})
DEFAULT_POLL_INTERVAL = 0.25


@dataclass(frozen=True)
class Snapshot:
    trip: Trip  # a copy: the engine's trip goes on changing


@dataclass(frozen=True)
class StepUpdate:
    step: Step
    trip_state: TripState
    outcome: str  # "" when read back from the step log or for an intent
    at: datetime


@dataclass(frozen=True)
class StateUpdate:
    previous: TripState
    state: TripState
    reason: str
    at: datetime


WatchItem = Snapshot | StepUpdate | StateUpdate


def copy_trip(trip: Trip) -> Trip:
    return replace(trip, steps={name: replace(step) for name, step in trip.steps.items()})


def _progress(step: Step, answered: bool) -> tuple[int, int]:
    """How far a step has got: (attempt, 0 sent / 1 answered, resent next / 2 finished)."""
    if step.finished_at is not None or step.status is not StepStatus.STARTED:
        return step.attempts, 2
    return step.attempts, 1 if answered else 0


class TripView:
    """What the watcher has told its client so far; turns events and re-reads into the differences."""

    def __init__(self, trip: Trip) -> None:
        self.state = trip.state
        self.steps: dict[str, Step] = {name: replace(step) for name, step in trip.steps.items()}
        self.progress = {name: _progress(step, False) for name, step in trip.steps.items()}

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def on_event(self, event: Change) -> list[WatchItem]:
        if isinstance(event, StateChange):
            if event.previous is not self.state or event.state is self.state:
                return []  # older than what was sent (queued before the snapshot)
            self.state = event.state
            return [StateUpdate(event.previous, event.state, event.reason, event.at)]
        assert isinstance(event, StepChange)
        step = event.step
        progress = _progress(step, event.answered)
        if step.name in self.progress and progress <= self.progress[step.name]:
            return []
        self.steps[step.name], self.progress[step.name] = step, progress
        items: list[WatchItem] = []
        if event.trip_state is not self.state:  # moved without an engine transition (RetryTrip's reopen)
            items.append(StateUpdate(self.state, event.trip_state, "", event.at))
            self.state = event.trip_state
        items.append(StepUpdate(step, event.trip_state, event.outcome, event.at))
        return items

    def on_read(self, trip: Trip) -> list[WatchItem]:
        """The differences between the trip as read from the step log and what was sent.

        Steps first, then the state change, as they happened; the step updates carry the state the client
        knows, so its `previous_state` -> `state` chain never skips (a step update carrying the new state
        before the state message made that message's previous_state look wrong to the client).
        """
        items: list[WatchItem] = []
        for step in trip.ordered_steps():
            known = self.steps.get(step.name)
            if known == step:
                continue
            self.steps[step.name], self.progress[step.name] = replace(step), _progress(step, False)
            items.append(StepUpdate(replace(step), self.state, "", trip.updated_at))
        if trip.state is not self.state:
            items.append(StateUpdate(self.state, trip.state, trip.failure_reason, trip.updated_at))
            self.state = trip.state
        return items


class TripWatcher:
    def __init__(
        self,
        hub: WatchHub,
        read: Callable[[str], Awaitable[Trip]],
        driving: Callable[[str], Trip | None],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        """read(trip_id): the trip from the step log (raises TripNotFoundError); driving(trip_id): the
        engine's live trip if this process drives it, else None."""
        self.hub = hub
        self._read = read
        self._driving = driving
        self.poll_interval = poll_interval

    async def _current(self, trip_id: str) -> Trip:
        live = self._driving(trip_id)
        return copy_trip(live) if live is not None else await self._read(trip_id)

    async def watch(self, trip_id: str) -> AsyncIterator[WatchItem]:
        with self.hub.subscribe(trip_id) as subscription:
            trip = await self._current(trip_id)
            view = TripView(trip)
            yield Snapshot(trip)
            while not view.finished:
                event: Change | None = None
                with contextlib.suppress(TimeoutError):
                    event = await asyncio.wait_for(subscription.queue.get(), self.poll_interval)
                if subscription.overflowed:
                    subscription.drain()
                    trip = await self._current(trip_id)
                    view = TripView(trip)
                    yield Snapshot(trip)
                elif event is not None:
                    for item in view.on_event(event):
                        yield item
                elif self._driving(trip_id) is None:  # driven elsewhere, or parked: the step log says
                    for item in view.on_read(await self._read(trip_id)):
                        yield item
