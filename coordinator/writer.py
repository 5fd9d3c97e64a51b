"""Group commit: many trips' step-log writes in one transaction and one fsync.

Callers hand `flush` a list of writes and wait; one writer task takes everything queued, writes it in
one transaction, and answers every caller. While a batch commits, new writes queue for the next one,
so the batch grows with the load (as PostgreSQL's commit_delay and Restate's log do): at concurrency 1
each flush is one transaction, at concurrency 64 dozens of trips share one.

Every write carries the fencing token its trip's driver holds (coordinator/lease.py). The batch writer
refuses the writes of a trip whose token has moved on (another replica took the trip over) and writes
the rest; the caller whose writes were refused gets a StaleLeaseError, and nothing it wrote landed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from services.kit.errors import TransientError

log = structlog.get_logger("tripmesh.writer")


@dataclass(frozen=True, slots=True)
class NewTrip:
    """Insert a trip (with token 1); if its id is taken, nothing of this trip in the batch is written."""

    trip_id: str
    values: dict[str, Any]
    fence: int = 1


@dataclass(frozen=True, slots=True)
class StepWrite:
    trip_id: str
    values: dict[str, Any]
    fence: int


@dataclass(frozen=True, slots=True)
class StateWrite:
    trip_id: str
    state: str
    reason: str
    at: datetime
    fence: int
    terminal: bool = False  # the lease ends with it: nobody needs to drive the trip any more
    operations: list[dict[str, Any]] | None = None  # the trip's changes and cancellations, when it has any


Write = NewTrip | StepWrite | StateWrite


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds a trip's lease now, as the step log says."""

    owner: str
    fence: int


class StaleLeaseError(Exception):
    """A write carried a fencing token the trip has moved past: another replica drives it now."""

    def __init__(self, trip_id: str, stale: int, current: Lease) -> None:
        super().__init__(f"trip {trip_id}: token {stale} is stale; {current.owner} holds token {current.fence}")
        self.trip_id = trip_id
        self.stale = stale
        self.current = current


@dataclass(frozen=True)
class BatchResult:
    conflicts: set[str]  # trips whose NewTrip found the id taken
    stale: dict[tuple[str, int], Lease]  # (trip id, refused token) -> the lease as it is now


BatchWriter = Callable[[Sequence[Write]], Awaitable[BatchResult]]


class GroupCommitter:
    def __init__(self, write_batch: BatchWriter, *, max_batch: int = 2048) -> None:
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._queue: list[tuple[Sequence[Write], asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def flush(self, writes: Sequence[Write]) -> bool:
        """Make the writes durable; False when the batch's NewTrip found the trip id taken.

        Raises StaleLeaseError when a write's token is stale (none of that trip's writes landed).
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="step-log-writer")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((writes, future))
        self._wake.set()
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _writes, future in self._queue:
            if not future.done():
                future.set_exception(TransientError("the step log is closing"))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[Sequence[Write], asyncio.Future[bool]]]) -> None:
        try:
            result = await self._write_batch([w for writes, _ in batch for w in writes])
        except Exception as error:  # noqa: BLE001 - not swallowed: every waiter gets it
            for _writes, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for writes, future in batch:
            if future.done():
                continue
            refused = next((w for w in writes if (w.trip_id, w.fence) in result.stale), None)
            if refused is not None:
                current = result.stale[(refused.trip_id, refused.fence)]
                future.set_exception(StaleLeaseError(refused.trip_id, refused.fence, current))
            else:
                future.set_result(not any(isinstance(w, NewTrip) and w.trip_id in result.conflicts for w in writes))
