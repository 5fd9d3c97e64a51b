"""Fault injection through configuration only: a real hotel server on port 0 with a temporary SQLite
database, started with TRIPMESH_HOTEL_FAULTS set, called through the generated stubs. The database is
read directly to tell "nothing happened" (when: before) from "it happened, the reply was lost" (after)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select

from services.hotel.app import SPEC
from services.hotel.models import reservations
from services.kit.faults import FaultInterceptor
from services.kit.interceptors import ServerInterceptor
from services.kit.limits import RequestGuard
from services.kit.status import error_info
from services.participant.runner import RunningParticipant, start_participant
from tests.support.cases.hotel import reserve
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import hotel_service_pb2 as hotel_pb
from tripmesh.v1 import hotel_service_pb2_grpc as hotel_grpc

pytestmark = pytest.mark.contract

FAULTS = "TRIPMESH_HOTEL_FAULTS"
DOMAIN = "tripmesh.v1.HotelService"

Hotel = tuple[RunningParticipant, "hotel_grpc.HotelServiceAsyncStub"]
StartHotel = Callable[..., AbstractAsyncContextManager[Hotel]]


@pytest.fixture
def hotel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StartHotel:
    """Start the hotel service with these fault rules (None: the variable unset) and this seed."""

    @asynccontextmanager
    async def start(rules: list[dict[str, Any]] | None, seed: int | None = None) -> AsyncIterator[Hotel]:
        monkeypatch.delenv(FAULTS, raising=False)
        monkeypatch.delenv("TRIPMESH_FAULT_SEED", raising=False)
        if rules is not None:
            monkeypatch.setenv(FAULTS, json.dumps(rules))
        if seed is not None:
            monkeypatch.setenv("TRIPMESH_FAULT_SEED", str(seed))
        running = await start_participant(
            SPEC, database_url=f"sqlite+aiosqlite:///{tmp_path}/hotel.db", hold_seconds=60, sweep_seconds=None
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                yield running, cast("hotel_grpc.HotelServiceAsyncStub", hotel_grpc.HotelServiceStub(channel))
        finally:
            await running.stop()

    return start


async def statuses(running: RunningParticipant, reservation_id: str) -> list[str]:
    async with running.engine.connect() as conn:
        rows = await conn.execute(select(reservations.c.status).where(reservations.c.reservation_id == reservation_id))
        return [row.status for row in rows]


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def injected(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "fault_injected"]


async def test_before_fails_with_a_rich_status_and_holds_nothing(hotel: StartHotel) -> None:
    async with hotel([{"method": "Reserve", "error_rate": 1.0, "code": "UNAVAILABLE"}]) as (running, stub):
        with structlog.testing.capture_logs() as logs:
            error = await refused(stub.Reserve(reserve("trip-before/hotel"), timeout=5))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        info = error_info(error)
        assert info is not None
        assert (info.reason, info.domain, info.metadata["fault_rule"]) == ("TEMPORARILY_UNAVAILABLE", DOMAIN, "0")
        assert await statuses(running, "trip-before/hotel") == []
        [entry] = injected(logs)
        assert {"method": "Reserve", "rule": 0, "code": "UNAVAILABLE", "when": "before"}.items() <= entry.items()


async def test_after_loses_the_reply_but_the_hold_is_taken_and_a_resend_is_safe(hotel: StartHotel) -> None:
    # Half the Reserves fail; find the seed whose first draw fails and second passes, so the run replays.
    seed = next(s for s in range(1000) if (draws := random.Random(s)).random() < 0.5 <= draws.random())
    rule = {"method": "Reserve", "error_rate": 0.5, "code": "UNAVAILABLE", "when": "after"}
    async with hotel([rule], seed=seed) as (running, stub):
        with structlog.testing.capture_logs() as logs:
            error = await refused(stub.Reserve(reserve("trip-after/hotel"), timeout=5))
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        assert await statuses(running, "trip-after/hotel") == ["HELD"]
        assert [entry["when"] for entry in injected(logs)] == ["after"]
        resent = await stub.Reserve(reserve("trip-after/hotel"), timeout=5)
        assert resent.reservation.reservation_id == "trip-after/hotel"
        assert resent.reservation.status == common_pb.RESERVATION_STATUS_HELD
        assert await statuses(running, "trip-after/hotel") == ["HELD"]


async def test_latency_past_the_deadline_is_deadline_exceeded_and_stops_the_call(hotel: StartHotel) -> None:
    async with hotel([{"method": "Reserve", "latency_ms": 300}]) as (running, stub):
        error = await refused(stub.Reserve(reserve("trip-slow/hotel"), timeout=0.1))
        assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # Had the sleep outlived the call, the handler would hold a room 300 ms in; look past that.
        await asyncio.sleep(0.35)
        assert await statuses(running, "trip-slow/hotel") == []
        # Within its deadline the same call succeeds, after the added latency.
        held = await stub.Reserve(reserve("trip-slow/hotel"), timeout=5)
        assert held.reservation.status == common_pb.RESERVATION_STATUS_HELD


async def test_a_match_marker_fails_only_the_requests_that_carry_it(hotel: StartHotel) -> None:
    rule = {"method": "*", "match": "fail-hotel", "code": "FAILED_PRECONDITION", "reason": "HOLD_EXPIRED"}
    async with hotel([rule]) as (running, stub):
        ok = await stub.Reserve(reserve("trip-plain/hotel"), timeout=5)
        assert ok.reservation.status == common_pb.RESERVATION_STATUS_HELD
        error = await refused(stub.Reserve(reserve("trip-fail-hotel-1/hotel"), timeout=5))
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(error)
        assert info is not None and info.reason == "HOLD_EXPIRED"
        assert await statuses(running, "trip-fail-hotel-1/hotel") == []
        confirmed = await stub.Confirm(hotel_pb.HotelServiceConfirmRequest(reservation_id="trip-plain/hotel"))
        assert confirmed.reservation.status == common_pb.RESERVATION_STATUS_CONFIRMED


async def test_health_is_never_faulted(hotel: StartHotel) -> None:
    async with hotel([{"method": "*", "error_rate": 1.0}]) as (running, _stub):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_no_rules_leave_the_interceptor_chain_as_it_was(hotel: StartHotel) -> None:
    unset_or_empty: tuple[list[dict[str, Any]] | None, ...] = (None, [])
    for rules in unset_or_empty:
        async with hotel(rules) as (running, stub):
            assert [type(i) for i in running.built.interceptors] == [ServerInterceptor, RequestGuard]
            held = await stub.Reserve(reserve(f"trip-plain-{rules is None}/hotel"), timeout=5)
            assert held.reservation.status == common_pb.RESERVATION_STATUS_HELD
    async with hotel([{"method": "Reserve", "latency_ms": 1}]) as (running, _stub):
        assert [type(i) for i in running.built.interceptors] == [ServerInterceptor, RequestGuard, FaultInterceptor]


async def test_bad_configuration_refuses_to_start(hotel: StartHotel) -> None:
    with pytest.raises(ValueError, match=r"TRIPMESH_HOTEL_FAULTS: rule 0: unknown code 'UNAVAILBLE'"):
        async with hotel([{"method": "Reserve", "code": "UNAVAILBLE"}]):
            pass
