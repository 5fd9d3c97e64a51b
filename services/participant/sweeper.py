"""The expiry loop: a participant releases its own holds once they outlive their expiry (P5)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from services.kit.errors import TransientError
from services.participant.store import ReservationStore

log = structlog.get_logger("tripmesh.sweeper")


async def sweep_forever(store: ReservationStore[Any], interval_seconds: float) -> None:
    while True:
        try:
            expired = await store.expire_due()
        except TransientError as error:
            log.warning("sweep_failed", error=str(error))
            expired = 0
        if expired:
            log.info("holds_expired", count=expired)
        await asyncio.sleep(interval_seconds)
