"""Runs trips: asks the planner what next, writes each step's intent, calls, writes the outcome.

Durability rule: nothing leaves the coordinator (a participant call, an answer to the client) before
everything it could depend on is durable. So each call first flushes the trip's pending writes with
its own intent, in one group-committed transaction; an outcome, or a non-final state change, waits in
`pending` for the next flush (the next intent or the final state). A crash before that flush loses only
outcomes nobody acted on yet: recovery resends those calls, and participants are idempotent.

Retries live here and only here, so every attempt is in the step log: transient and unknown outcomes
are resent with exponential backoff and full jitter up to the action's budget; refusals never are.
Parallel steps of a group run as concurrent tasks in one TaskGroup.

Leases (coordinator/lease.py): every write carries the trip's fencing token. When the step log refuses
one as stale (another replica took the trip over while this one was paused or cut off), the driver
stops at once: the refused write was an intent or a final state, so nothing depending on it was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from coordinator.crashpoints import CrashPoints
from coordinator.events import TripEvents
from coordinator.participants import Outcome, OutcomeKind, Participants
from coordinator.planner import Done, Transition, plan
from coordinator.requests import build_request
from coordinator.saga import SAGAS, SagaDefinition, unknown_definition
from coordinator.steplog import StepLogStore, new_trip, state_write, step_write
from coordinator.trip import Action, Step, StepStatus, Trip, TripState
from coordinator.writer import StaleLeaseError, Write
from services.kit.clock import Clock
from services.kit.errors import TransientError

log = structlog.get_logger("tripmesh.engine")
# The trip states logged at info: how trips end, and where one goes wrong.
_NOTEWORTHY = frozenset({TripState.CONFIRMED, TripState.CANCELLED, TripState.COMPENSATING, TripState.NEEDS_ATTENTION})


# States in which every step only moves the trip forward: a failure there parks it, never undoes it.
_FORWARD_ONLY = frozenset({TripState.CANCELLING})


class TripTakenError(Exception):
    """A new trip's id was found taken when its first writes were flushed; nothing was sent."""


@dataclass(frozen=True)
class RetryPolicy:
    reserve_attempts: int = 4
    confirm_attempts: int = 30
    cancel_attempts: int = 30
    initial_backoff: float = 0.05
    max_backoff: float = 2.0

    def attempts(self, action: Action, *, forward_only: bool = False) -> int:
        """The budget of a step's call. A reserve gives up soon, as giving up undoes the trip, except where
        nothing is undone any more (a cancellation's refund and message): that one is as patient as a confirm."""
        if forward_only and action is Action.RESERVE:
            return self.confirm_attempts
        return {
            Action.RESERVE: self.reserve_attempts,
            Action.CONFIRM: self.confirm_attempts,
            Action.CANCEL: self.cancel_attempts,
        }[action]

    def backoff(self, attempt: int) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(max, initial * 2^(attempt-1))]."""
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1)))


class Engine:
    def __init__(
        self,
        saga: SagaDefinition,
        store: StepLogStore,
        participants: Participants,
        clock: Clock,
        policy: RetryPolicy,
        crash: CrashPoints | None = None,
        max_active: int = 256,
        events: TripEvents | None = None,
        sagas: Mapping[int, SagaDefinition] | None = None,
    ) -> None:
        """`saga` is what new trips start under; `sagas` every definition this engine can drive a trip
        by (default: those this build knows, coordinator/saga.py SAGAS, and `saga`)."""
        # At most max_active trips call participants at once; the rest wait their turn having sent
        # nothing. Without it, a recovery of thousands of trips (or a burst) sends every call at once,
        # deadlines pass in the participants' queues and retry budgets burn into needless compensations.
        self._slots = asyncio.Semaphore(max_active)
        self._in_slots = 0
        self.crash = crash
        self.saga = saga
        self.sagas: dict[int, SagaDefinition] = {**(SAGAS if sagas is None else sagas), saga.version: saga}
        self.store = store
        self.participants = participants
        self.clock = clock
        self.policy = policy
        self.events = events or TripEvents(clock)  # metrics, tracing, watchers (coordinator/events.py)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._live: dict[str, Trip] = {}
        self._pending: dict[str, list[Write]] = {}
        self.taken: set[str] = set()  # new trips whose id turned out to be taken when first flushed
        # A new trip's first flush: True once durable, False if its driver ended before (taken, crashed).
        self._accepted: dict[str, asyncio.Future[bool]] = {}

    def start(self, trip: Trip, *, new: bool = False) -> None:
        """Drive a trip in the background, unless this process already is.

        A new trip is written with its first intents (one fsync); if its id is taken by then, nothing
        is sent and its id lands in `taken`.
        """
        if trip.trip_id in self._tasks or trip.state.terminal:
            return
        if trip.definition_version not in self.sagas:
            # Never guess how to drive a trip of a definition this build does not know (a newer one,
            # or one retired): leave it as it is for a coordinator that does.
            log.warning(
                "definition_unknown",
                trip_id=trip.trip_id,
                definition_version=trip.definition_version,
                detail=unknown_definition(trip.definition_version, self.sagas),
            )
            return
        self._pending[trip.trip_id] = [new_trip(trip)] if new else []
        if new:
            self._accepted[trip.trip_id] = asyncio.get_running_loop().create_future()
        self._live[trip.trip_id] = trip
        self._tasks[trip.trip_id] = asyncio.create_task(self._drive(trip), name=f"trip:{trip.trip_id}")

    async def accepted(self, trip_id: str) -> bool:
        """Wait until a new trip is durable: True, or False if it never will be (taken, or its driver died).

        Nothing may be acknowledged before this is True. Unbounded here: the caller's deadline bounds it.
        """
        future = self._accepted.get(trip_id)
        if future is None:
            return True  # loaded from the step log, or flushed long ago
        accepted = await asyncio.shield(future)
        if not accepted and self._accepted.get(trip_id) is future and trip_id not in self._tasks:
            del self._accepted[trip_id]
        return accepted

    def live(self, trip_id: str) -> Trip | None:
        return self._live.get(trip_id)

    def driving(self) -> list[str]:
        """The trips this process drives (or has queued to drive) that are in the step log already:
        the leases it must keep renewing (a new trip's lease is written with its first flush)."""
        return [t for t in self._tasks if (f := self._accepted.get(t)) is None or (f.done() and f.result())]

    async def abandon(self, trip_id: str) -> None:
        """Stop driving a trip (its lease was re-granted under a new token); safe as any cancel is."""
        task = self._tasks.get(trip_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @property
    def active(self) -> int:
        return len(self._tasks)

    @property
    def waiting(self) -> int:
        """Trips started here but still waiting for a slot: nothing sent yet, a new one not even written.
        TripService admits new trips only while this is under its limit (backpressure)."""
        return len(self._tasks) - self._in_slots

    async def wait(self, trip_id: str, seconds: float | None) -> None:
        """Wait until the trip this process drives is terminal, or `seconds` pass."""
        if trip_id not in self._tasks:
            return
        # Made on the first wait only: most trips in flight have nobody waiting for them here.
        event = self._finished.get(trip_id)
        if event is None:
            event = self._finished[trip_id] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    async def stop(self, grace: float = 0.0) -> None:
        """Let the trips being driven finish their current work for up to `grace` seconds, then cancel.

        A cancelled trip is safe: whatever it was doing is in the step log, and recovery picks it up.
        """
        tasks = list(self._tasks.values())
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drive(self, trip: Trip) -> None:
        # The task runs in a context of its own: bound here, trip_id is on every line it logs, and only there.
        structlog.contextvars.bind_contextvars(trip_id=trip.trip_id)
        with self.events.driving(trip):
            try:
                async with self._slots:
                    self._in_slots += 1
                    try:
                        await self._run(trip)
                    finally:
                        self._in_slots -= 1
            except Exception:
                # A bug, not an outcome: leave the trip to recovery at the next start, and say so loudly.
                log.exception("trip_driver_crashed", state=trip.state.value)
                raise
            finally:
                self._tasks.pop(trip.trip_id, None)
                self._live.pop(trip.trip_id, None)
                self._pending.pop(trip.trip_id, None)
                accepted = self._accepted.get(trip.trip_id)
                if accepted is not None and not accepted.done():
                    accepted.set_result(False)  # kept until a waiting BookTrip has read it
                elif accepted is not None:
                    del self._accepted[trip.trip_id]
                event = self._finished.pop(trip.trip_id, None)
                if event is not None:
                    event.set()

    async def _run(self, trip: Trip) -> None:
        delay = self.policy.initial_backoff
        while True:
            next_plan = plan(self.sagas[trip.definition_version], trip, self.clock.now())
            if isinstance(next_plan, Done):
                return
            try:
                if isinstance(next_plan, Transition):
                    await self._transition(trip, next_plan)
                else:
                    await self._call(trip, next_plan.steps)
                delay = self.policy.initial_backoff
            except TransientError as error:
                # The step log could not be written: nothing was sent without its intent. Try again.
                log.warning("step_log_unavailable", error=str(error), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(self.policy.max_backoff, delay * 2)
            except TripTakenError:
                self.taken.add(trip.trip_id)
                return
            except StaleLeaseError as error:
                # Another replica holds the trip under a newer token: stop; never send what was refused.
                log.warning(
                    "stale_write_refused",
                    replica=self.store.replica_id,
                    stale_token=error.stale,
                    current_token=error.current.fence,
                    current_owner=error.current.owner,
                )
                return

    async def _call(self, trip: Trip, names: tuple[str, ...]) -> None:
        """Run the steps of one group in parallel; if one cannot be logged, stop the others too."""
        if len(names) == 1:
            await self._run_step(trip, names[0])
            return
        try:
            async with asyncio.TaskGroup() as group:
                # The first step runs in this task (one task less per trip in flight), the others beside
                # it; it starts first, so the steps' order in the log is as before. If it raises, the
                # group cancels the others and raises it in its ExceptionGroup, as for any of them.
                for name in names[1:]:
                    group.create_task(self._run_step(trip, name))
                await self._run_step(trip, names[0])
        except ExceptionGroup as errors:
            first = errors.exceptions[0]
            if isinstance(first, TransientError | TripTakenError | StaleLeaseError):
                raise first from errors
            raise

    async def _flush(self, trip: Trip, *writes: Write) -> None:
        """Make the trip's pending writes and these durable, in one group-committed transaction."""
        pending = self._pending.setdefault(trip.trip_id, [])
        batch = [*pending, *writes]
        pending.clear()
        try:
            written = await self.store.flush(batch)
        except TransientError:
            pending[:0] = batch  # nothing was written: keep it all for the next flush
            raise
        if not written:
            raise TripTakenError(trip.trip_id)
        accepted = self._accepted.get(trip.trip_id)
        if accepted is not None and not accepted.done():
            accepted.set_result(True)
            del self._accepted[trip.trip_id]  # durable: no future needed any more (`accepted` says True)
            self.events.accepted(trip)

    async def _transition(self, trip: Trip, transition: Transition) -> None:
        now = self.clock.now()
        reason = transition.reason or trip.failure_reason
        previous = trip.state
        op = trip.operation
        if op is not None:
            if transition.outcome is not None:
                # A change or cancellation ends: the trip is CONFIRMED (as changed, or as it was) or CANCELLED.
                op.outcome, op.reason = transition.outcome, transition.reason
                reason = "" if transition.state is TripState.CONFIRMED else transition.reason
            elif transition.state is TripState.NEEDS_ATTENTION:
                op.parked_from = previous.value  # where RetryTrip sends it back
        trip.state, trip.failure_reason, trip.updated_at = transition.state, reason, now
        if trip.state.terminal:
            await self._flush(trip, state_write(trip))  # durable before the client hears of it
        else:
            self._pending[trip.trip_id].append(state_write(trip))  # durable with the next intent
        if self.crash:
            self.crash.hit("after_state", transition.state.value)
        self.events.state_changed(trip, previous)
        # Every transition is in the step log; the log keeps the ones an operator looks for at info.
        (log.info if trip.state in _NOTEWORTHY else log.debug)(
            "trip_state", previous=previous.value, state=trip.state.value, reason=reason or None
        )

    async def _run_step(self, trip: Trip, name: str) -> None:
        step = trip.steps.get(name)
        if step is None:
            step = Step(
                name=name, seq=len(trip.steps) + 1, status=StepStatus.STARTED, attempts=0, started_at=self.clock.now()
            )
            trip.steps[name] = step
        request = build_request(self.sagas[trip.definition_version], trip, name)
        budget = step.attempts + self.policy.attempts(step.action, forward_only=trip.state in _FORWARD_ONLY)
        while True:
            step.attempts += 1
            step.status, step.finished_at = StepStatus.STARTED, None
            if self.crash:
                self.crash.hit("before_intent", name)
            await self._flush(trip, step_write(trip, step))  # durable before the call leaves
            if self.crash:
                self.crash.hit("after_intent", name)
            with self.events.calling(trip, step) as call:
                call.outcome = outcome = await self.participants.call(name, request, trip.trip_id)
                if self.crash:
                    self.crash.hit("after_call", name)
                # recorded before the call's event goes out, so a watcher sees the step as logged
                self._record(step, outcome)
                retry = outcome.kind in (OutcomeKind.TRANSIENT, OutcomeKind.UNKNOWN) and step.attempts < budget
                if not retry:
                    if step.status is StepStatus.STARTED:
                        step.status = StepStatus.FAILED
                    step.finished_at = self.clock.now()
            self._pending[trip.trip_id].append(step_write(trip, step))
            if self.crash:
                self.crash.hit("after_outcome", name)
            # An answered call is the common case and the step log has it; only trouble is worth a line at info.
            (log.debug if outcome.kind is OutcomeKind.OK else log.info)(
                "step_outcome",
                step=name,
                attempt=step.attempts,
                outcome=outcome.kind.value,
                code=outcome.code or None,
                reason=outcome.reason or None,
            )
            if not retry:
                return
            await asyncio.sleep(self.policy.backoff(step.attempts))

    @staticmethod
    def _record(step: Step, outcome: Outcome) -> None:
        if outcome.kind is OutcomeKind.OK:
            step.status = StepStatus.SUCCEEDED
            step.result = outcome.result
            return
        step.error_code, step.error_reason, step.error_message = outcome.code, outcome.reason, outcome.message
        if outcome.kind is OutcomeKind.REFUSED:
            step.status = StepStatus.REFUSED
