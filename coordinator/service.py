"""The coordinator's use cases: accept a trip durably, drive it, read trips. No proto, no SQL here."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from coordinator.booking import booking
from coordinator.engine import Engine
from coordinator.fares import cancellation_fee
from coordinator.operations import operation_steps
from coordinator.parse import ChangeSpec
from coordinator.saga import SagaDefinition, unknown_definition
from coordinator.steplog import StepLogStore
from coordinator.trip import Action, Operation, OperationKind, StepStatus, Trip, TripRequest, TripState
from services.kit.clock import Clock
from services.kit.errors import (
    ChangeConflictError,
    DefinitionUnknownError,
    InvalidRequestError,
    OverloadedError,
    TransientError,
    TripConflictError,
    TripNotCancellableError,
    TripNotChangeableError,
    TripNotFoundError,
    TripNotRetriableError,
)

CANCEL_ID = "cancel"  # the operation id of a trip's cancellation (there is at most one)


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
        trip = self.engine.live(request.trip_id) or await self._start(request)
        if trip.request is not request and trip.request.fingerprint() != request.fingerprint():
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

    async def _start(self, request: TripRequest) -> Trip:
        """Start the trip as a new one, without reading the step log first.

        Whether its id is known shows at its first flush: a NewTrip whose id is taken writes nothing of
        the trip, sends nothing, and `book` answers with the trip as the step log has it. That saves a
        read per BookTrip (8 % of the coordinator's CPU at c=16) for a write per repeat. Only when the
        coordinator is full is the step log read first, so that a repeat of a known trip is answered,
        never refused.
        """
        if self._full(request.trip_id):
            known = await self.store.load(request.trip_id)
            if known is not None:
                return known
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
        return self.engine.live(request.trip_id) or candidate

    def _full(self, trip_id: str) -> bool:
        return (
            self.max_pending is not None
            and self.engine.live(trip_id) is None
            and self.engine.waiting >= self.max_pending
        )

    def _admit(self, trip_id: str) -> None:
        """Backpressure: refuse a new trip, before anything is written, when `max_pending` trips already
        wait for a slot. Trips already accepted, recovered ones and repeats of known trip ids are never
        refused here; after a crash, a recovered backlog counts too, so new trips wait until it drains."""
        if self._full(trip_id):
            waiting = self.engine.waiting
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
        op = trip.operation
        if op is not None:  # a change or cancellation parked: back to where it stopped
            state = TripState(op.parked_from)
            names = operation_steps(self.engine.sagas[trip.definition_version], trip, op)
            failed = [n for n in names if trip.status_of(n) is StepStatus.FAILED]
        else:
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

    async def change(self, spec: ChangeSpec, wait: float | None) -> tuple[Trip, Operation]:
        """Change a CONFIRMED trip (ChangeTrip): accept the change durably, then wait for its outcome.

        The change id is the idempotency key: a repeat follows the same change; another change under
        the same id is refused. Only the parts that differ from the trip as booked are reserved anew.
        """
        seconds = self.book_wait if wait is None else wait
        for _ in range(3):  # lost a race to another ChangeTrip or CancelTrip: look again
            trip = await self._current(spec.trip_id)
            known = next((op for op in trip.operations if op.operation_id == spec.change_id), None)
            if known is not None:
                if known.kind is not OperationKind.CHANGE or known.fingerprint != spec.fingerprint():
                    raise ChangeConflictError(
                        f"trip {spec.trip_id!r} already has a change {spec.change_id!r} that is a different change"
                    )
                return await self._operation_outcome(trip, spec.change_id, seconds)
            if trip.state is not TripState.CONFIRMED:
                raise TripNotChangeableError(
                    f"trip {spec.trip_id!r} is {trip.state.value}; only a CONFIRMED trip can be changed"
                )
            op = self._new_change(trip, spec)
            if await self.store.begin_operation(trip, op, TripState.CHANGING, self.clock.now()):
                return await self._operation_outcome(trip, op.operation_id, seconds, start=True)
        raise TransientError(f"trip {spec.trip_id!r} is being changed by other requests at once; retry")

    def _new_change(self, trip: Trip, spec: ChangeSpec) -> Operation:
        saga = self.engine.sagas[trip.definition_version]
        for part, given in (("hotel", spec.hotel or spec.drop_hotel), ("car", spec.car or spec.drop_car)):
            if given and part not in saga.priced:
                raise InvalidRequestError.of(
                    part, f"trip {trip.trip_id!r} was booked under saga {saga.label}, which has no {part}"
                )
        before = booking(saga, trip)
        after = spec.applied_to(before.request)
        differ = [p for p in saga.priced if getattr(after, p) != getattr(before.request, p)]
        if not differ:
            raise InvalidRequestError.of("change_id", "the change changes nothing: the trip is booked so already")
        now = self.clock.now()
        return Operation(
            operation_id=spec.change_id,
            kind=OperationKind.CHANGE,
            revision=len(trip.operations) + 2,
            created_at=now,
            deadline_at=now + self.trip_timeout,
            request=after,
            parts=tuple(p for p in differ if getattr(after, p) is not None),
            dropped=tuple(p for p in differ if p in before.parts),
            fingerprint=spec.fingerprint(),
        )

    async def cancel(self, trip_id: str, wait: float | None) -> Trip:
        """Cancel a CONFIRMED trip at its customer's request (CancelTrip); a cancelled trip is answered as is."""
        seconds = self.book_wait if wait is None else wait
        for _ in range(3):
            trip = await self._current(trip_id)
            if trip.state is TripState.CANCELLED:
                return trip
            if trip.state is TripState.CANCELLING:
                return (await self._operation_outcome(trip, CANCEL_ID, seconds))[0]
            if trip.state is not TripState.CONFIRMED:
                raise TripNotCancellableError(
                    f"trip {trip_id!r} is {trip.state.value}; only a CONFIRMED trip can be cancelled"
                    + (" (RetryTrip sends it on first)" if trip.state is TripState.NEEDS_ATTENTION else "")
                )
            saga = self.engine.sagas[trip.definition_version]
            before = booking(saga, trip)
            flight_price = trip.price_of("flight", before.parts.get("flight", 1)) or 0
            now = self.clock.now()
            op = Operation(
                operation_id=CANCEL_ID,
                kind=OperationKind.CANCEL,
                revision=len(trip.operations) + 2,
                created_at=now,
                deadline_at=now + self.trip_timeout,
                fee_minor=min(before.paid, cancellation_fee(before.request.flight, flight_price, now.date())),
            )
            if await self.store.begin_operation(trip, op, TripState.CANCELLING, now):
                return (await self._operation_outcome(trip, CANCEL_ID, seconds, start=True))[0]
        raise TransientError(f"trip {trip_id!r} is being changed by other requests at once; retry")

    async def _current(self, trip_id: str) -> Trip:
        trip = self.engine.live(trip_id) or await self.get(trip_id)
        if trip.definition_version not in self.engine.sagas:
            why = unknown_definition(trip.definition_version, self.engine.sagas)
            raise DefinitionUnknownError(
                f"trip {trip_id!r} cannot be changed here: {why}",
                metadata={"definition_version": str(trip.definition_version)},
            )
        return trip

    async def _operation_outcome(
        self, trip: Trip, operation_id: str, seconds: float, *, start: bool = False
    ) -> tuple[Trip, Operation]:
        """Drive (a just-accepted operation) or follow the trip until the operation ends or `seconds` pass."""
        if start:
            trip = await self.get(trip.trip_id)  # as written, with its new lease
            self.engine.start(trip)
        trip = await self._outcome(trip, seconds)
        op = next(op for op in trip.operations if op.operation_id == operation_id)
        return trip, op

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
