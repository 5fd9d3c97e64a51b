"""No oversell on either backend (P6, I5): many concurrent Reserves over real gRPC on the last units.

Each service runs on its own database with its real pool (PostgreSQL: 10 + 5 connections, so up to
15 Reserve transactions really run at once under READ COMMITTED). The scarce row is first filled
up to its last few units by plain SQL (as confirmed sales would have), then ATTEMPTS Reserves race
for them: exactly `left` must succeed, every other one must be refused as sold out / insufficient
funds, and the counters must end at exactly capacity. Hotel stays overlap on different nights, so
their multi-row UPDATEs lock rows in different sets (a deadlock there is retried, not oversold).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from services.participant.runner import ParticipantSpec, start_participant
from tests.support.cases import flight, hotel, payment
from tests.support.databases import Databases

pytestmark = [pytest.mark.contract, pytest.mark.postgresql]

ATTEMPTS = 48


@dataclass(frozen=True)
class Race:
    spec: ParticipantSpec
    stub: Callable[[grpc.aio.Channel], Any]
    fill: str  # SQL leaving exactly `left` units of the scarce row
    left: int
    request: Callable[[int], Any]  # attempt number -> Reserve request
    refusal: grpc.StatusCode
    counters: str  # SQL: (used, capacity) of the scarce row after the race


RACES = {
    "flight": Race(
        flight.SPEC,
        flight.CASE.stub,
        "UPDATE flight_cabins SET confirmed = capacity - 5 WHERE flight_id = 'TM101-20270315' AND cabin = 'ECONOMY'",
        5,
        # round trips and one-way trips on the same nearly full outbound flight
        lambda i: flight.reserve(f"race-{i}", back=flight.RETURN if i % 2 else ""),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SELECT held + confirmed, capacity FROM flight_cabins WHERE flight_id = 'TM101-20270315' AND cabin = 'ECONOMY'",
    ),
    "hotel": Race(
        hotel.SPEC,
        hotel.CASE.stub,
        "UPDATE room_nights SET confirmed = capacity - 3 WHERE hotel_id = 'lis-alfama' AND room_type = 'STANDARD'"
        " AND night = '2027-03-17'",
        3,
        # three-night stays, half from the 15th and half from the 16th: all need the nearly full 17th
        lambda i: hotel.reserve(f"race-{i}", check_in=f"2027-03-1{5 + i % 2}", check_out=f"2027-03-1{8 + i % 2}"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SELECT held + confirmed, capacity FROM room_nights WHERE hotel_id = 'lis-alfama' AND room_type = 'STANDARD'"
        " AND night = '2027-03-17'",
    ),
    "payment": Race(
        payment.SPEC,
        payment.CASE.stub,
        "UPDATE payment_methods SET captured_minor = credit_limit_minor - 3000"
        " WHERE payment_method_id = 'pm_scarce_visa'",
        3,
        lambda i: payment.authorise(
            f"race-{i}", customer_id="cust-scarce", payment_method_id="pm_scarce_visa", minor_units=1000
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SELECT (authorized_minor + captured_minor) / 1000, credit_limit_minor / 1000 FROM payment_methods"
        " WHERE payment_method_id = 'pm_scarce_visa'",
    ),
}


@pytest.mark.parametrize("name", list(RACES))
async def test_concurrent_reserves_on_the_last_units_never_oversell(name: str, databases: Databases) -> None:
    race = RACES[name]
    running = await start_participant(race.spec, database_url=databases.url(name), sweep_seconds=None)
    try:
        async with running.engine.begin() as conn:
            await conn.execute(text(race.fill))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = race.stub(channel)
            outcomes = await asyncio.gather(
                *(stub.Reserve(race.request(i), timeout=60) for i in range(ATTEMPTS)), return_exceptions=True
            )
        won = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        others = [o for o in outcomes if isinstance(o, BaseException) and o not in refused]
        assert others == []
        assert {r.code() for r in refused} <= {race.refusal}, [r.details() for r in refused]
        print(f"{name} [{databases.backend}]: {ATTEMPTS} attempts, {len(won)} held, {race.left} left")
        assert len(won) == race.left, f"{len(won)} of {ATTEMPTS} Reserves won {race.left} last units"
        async with running.engine.connect() as conn:
            used, capacity = (await conn.execute(text(race.counters))).one()
            held = (await conn.execute(text("SELECT count(*) FROM reservations WHERE status = 'HELD'"))).scalar_one()
        assert (used, held) == (capacity, race.left)
    finally:
        await running.stop()
