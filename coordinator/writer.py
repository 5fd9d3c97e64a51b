"""Group commit: many trips' step-log writes in one transaction and one fsync.

Callers hand `flush` a list of writes and wait; one writer task takes everything queued, writes it in
one transaction, and answers every caller. While a batch commits, new writes queue for the next one,
so the batch grows with the load (as PostgreSQL's commit_delay and Restate's log do): at concurrency 1
each flush is one transaction, at concurrency 64 dozens of trips share one.
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
    """Insert a trip; if its id is taken, nothing of this trip in the batch is written (a conflict)."""

    trip_id: str
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StepWrite:
    trip_id: str
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StateWrite:
    trip_id: str
    state: str
    reason: str
    at: datetime


Write = NewTrip | StepWrite | StateWrite

# write_batch(writes) -> ids of trips whose NewTrip found the id taken
BatchWriter = Callable[[Sequence[Write]], Awaitable[set[str]]]


class GroupCommitter:
    def __init__(self, write_batch: BatchWriter, *, max_batch: int = 2048) -> None:
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._queue: list[tuple[Sequence[Write], asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def flush(self, writes: Sequence[Write]) -> bool:
        """Make the writes durable; False when the batch's NewTrip found the trip id taken."""
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
            conflicts = await self._write_batch([w for writes, _ in batch for w in writes])
        except Exception as error:  # noqa: BLE001 - not swallowed: every waiter gets it
            for _writes, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for writes, future in batch:
            if not future.done():
                future.set_result(not any(isinstance(w, NewTrip) and w.trip_id in conflicts for w in writes))
