"""The coordinator's use cases: accept a trip durably, drive it, read trips. No proto, no SQL here."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from coordinator.engine import Engine
from coordinator.saga import SagaDefinition, unknown_definition
from coordinator.steplog import StepLogStore
from coordinator.trip import Action, StepStatus, Trip, TripRequest, TripState
from services.kit.clock import Clock
from services.kit.errors import (
    DefinitionUnknownError,
    InvalidRequestError,
    OverloadedError,
    TransientError,
    TripConflictError,
    TripNotFoundError,
    TripNotRetriableError,
)


class TripService:
    def __init__(
        self,
        saga: SagaDefinition,
        store: StepLogStore,
        engine: Engine,
        clock: Clock,
        *,
        trip_timeout: float,
        book_wait: float,
        max_pending: int | None = None,
    ) -> None:
        self.saga = saga
        self.store = store
        self.engine = engine
        self.clock = clock
        self.trip_timeout = timedelta(seconds=trip_timeout)
        self.book_wait = book_wait
        self.max_pending = max_pending  # None: no admission limit (new trips queue for a slot)

    async def book(self, request: TripRequest, wait: float | None) -> Trip:
        """Accept the trip (durably, once per trip id), then wait for its outcome up to `wait` seconds.

        A new trip is written together with its first intents (one fsync for both) and nothing is
        answered before that write commits: an acknowledged trip survives any crash. The trip id is the
        idempotency key: a repeat with the same request joins the trip, another request is refused.
        """
        seconds = self.book_wait if wait is None else wait
        trip = self.engine.live(request.trip_id) or await self.store.load(request.trip_id)
        if trip is None:
            now = self.clock.now()
            candidate = Trip(
                request=request,
                state=TripState.RESERVING,  # accepted: written with the first intents
                created_at=now,
                updated_at=now,
                deadline_at=now + self.trip_timeout,
                definition_version=self.saga.version,
                fence=1,  # the first lease's token, written with the trip (coordinator/lease.py)
            )
            self._admit(request.trip_id)  # no await between this check and the start: the limit is exact
            self.engine.start(candidate, new=True)  # a no-op if a concurrent call started this id first
            trip = self.engine.live(request.trip_id) or candidate
        if trip.request.fingerprint() != request.fingerprint():
            raise TripConflictError(f"trip {request.trip_id!r} already exists with a different request")
        if not await self.engine.accepted(trip.trip_id):
            if trip.trip_id not in self.engine.taken:
                raise TransientError(f"trip {request.trip_id!r} could not be written; nothing was booked, retry")
            # Another coordinator wrote this id first: answer as for any repeat.
            self.engine.taken.discard(trip.trip_id)
            trip = await self.get(request.trip_id)
            if trip.request.fingerprint() != request.fingerprint():
                raise TripConflictError(f"trip {request.trip_id!r} already exists with a different request")
        return await self._outcome(trip, seconds)

    async def _outcome(self, trip: Trip, seconds: float) -> Trip:
        """Wait up to `seconds` for the trip's outcome, wherever it is driven.

        Driven here: wait for the engine. Leased to nobody (its replica died and no scan took it yet):
        take it and drive it here. Driven by another replica: read the shared step log until it ends.
        Started under a definition this coordinator does not know: answer with it as it is.
        """
        if trip.definition_version not in self.engine.sagas:
            self.engine.start(trip)  # logs definition_unknown and leaves the trip alone
            return trip
        if self.engine.live(trip.trip_id) is None and not trip.state.terminal:
            claimed = await self.store.claim_one(trip.trip_id)
            if claimed is None:
                return await self._follow(trip.trip_id, seconds)
            self.engine.start(claimed)
        driven = self.engine.live(trip.trip_id)  # the object the engine drives, updated in place
        await self.engine.wait(trip.trip_id, seconds)
        return self.engine.live(trip.trip_id) or driven or await self.get(trip.trip_id)

    async def _follow(self, trip_id: str, seconds: float, every: float = 0.1) -> Trip:
        """Read a trip another replica drives until it is terminal or `seconds` pass."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            trip = await self.get(trip_id)
            left = deadline - asyncio.get_running_loop().time()
            if trip.state.terminal or left <= 0 or self.engine.live(trip_id) is not None:
                return self.engine.live(trip_id) or trip
            await asyncio.sleep(min(every, left))
            every = min(every * 2, 1.0)

    def _admit(self, trip_id: str) -> None:
        """Backpressure: refuse a new trip, before anything is written, when `max_pending` trips already
        wait for a slot. Trips already accepted, recovered ones and repeats of known trip ids are never
        refused here; after a crash, a recovered backlog counts too, so new trips wait until it drains."""
        if self.max_pending is None or self.engine.live(trip_id) is not None:
            return
        waiting = self.engine.waiting
        if waiting >= self.max_pending:
            raise OverloadedError(
                f"the coordinator is at capacity ({self.engine.active - waiting} trips in progress, {waiting} "
                f"waiting); trip {trip_id!r} was not accepted and nothing was written: retry later",
                metadata={"waiting_trips": str(waiting), "max_pending_trips": str(self.max_pending)},
            )

    async def retry(self, trip_id: str, wait: float | None) -> Trip:
        """An operator's retry of a trip parked in NEEDS_ATTENTION: resume it with fresh retry budgets."""
        trip = await self.get(trip_id)
        if trip.definition_version not in self.engine.sagas:
            why = unknown_definition(trip.definition_version, self.engine.sagas)
            raise DefinitionUnknownError(
                f"trip {trip_id!r} cannot be retried here: {why}",
                metadata={"definition_version": str(trip.definition_version)},
            )
        if trip.state is not TripState.NEEDS_ATTENTION:
            driver = f" (driven by coordinator replica {trip.owner})" if not trip.state.terminal and trip.owner else ""
            raise TripNotRetriableError(
                f"trip {trip_id!r} is {trip.state.value}{driver}; only a trip in NEEDS_ATTENTION can be retried"
            )
        compensating = any(step.action is Action.CANCEL for step in trip.steps.values())
        state = TripState.COMPENSATING if compensating else TripState.CONFIRMING
        action = Action.CANCEL if compensating else Action.CONFIRM
        failed = [s.name for s in trip.steps.values() if s.action is action and s.status is StepStatus.FAILED]
        seconds = self.book_wait if wait is None else wait
        if await self.store.reopen(trip, state, failed, self.clock.now()):  # takes the lease, new token
            reopened = await self.get(trip_id)
            self.engine.start(reopened)
            await self.engine.wait(trip_id, seconds)
            return self.engine.live(trip_id) or await self.get(trip_id)
        return await self._follow(trip_id, seconds)  # another operator's retry won; it is driven there

    async def get(self, trip_id: str) -> Trip:
        trip = await self.store.load(trip_id)
        if trip is None:
            raise TripNotFoundError(f"no trip {trip_id!r}")
        return trip

    async def list(
        self, *, state: TripState | None, customer_id: str, page_size: int, page_token: str
    ) -> tuple[list[Trip], str]:
        try:
            return await self.store.list_trips(
                state=state, customer_id=customer_id, page_size=page_size, page_token=page_token
            )
        except ValueError as error:
            raise InvalidRequestError.of("page_token", "is not a token from a previous ListTrips response") from error
