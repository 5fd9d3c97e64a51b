"""The dashboard's only way to the coordinator: its public gRPC API (ListTrips, GetTrip, WatchTrip,
RetryTrip), like any other client. No step log, no database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

STATES = (
    common_pb.TRIP_STATE_RESERVING,
    common_pb.TRIP_STATE_CONFIRMING,
    common_pb.TRIP_STATE_COMPENSATING,
    common_pb.TRIP_STATE_CHANGING,
    common_pb.TRIP_STATE_CANCELLING,
    common_pb.TRIP_STATE_NEEDS_ATTENTION,
    common_pb.TRIP_STATE_CONFIRMED,
    common_pb.TRIP_STATE_CANCELLED,
)
COUNT_CAP = 1000  # counted exactly up to this many per state (two ListTrips pages), shown as "1000+" past it
CALL_TIMEOUT = 5.0
RETRY_WAIT = 3.0  # RetryTrip answers with the trip as it is by then; the page follows the rest live


@dataclass(frozen=True)
class Count:
    state: int
    count: int
    capped: bool


class CoordinatorClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = trip_grpc.TripCoordinatorStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def get(self, trip_id: str) -> trip_pb.Trip:
        response = await self.stub.GetTrip(trip_pb.GetTripRequest(trip_id=trip_id), timeout=CALL_TIMEOUT)
        trip: trip_pb.Trip = response.trip
        return trip

    async def list_trips(self, *, state: int = 0, customer_id: str = "", page_size: int = 50) -> list[trip_pb.Trip]:
        request = trip_pb.ListTripsRequest(state=state, customer_id=customer_id, page_size=page_size)  # type: ignore[arg-type]
        response = await self.stub.ListTrips(request, timeout=CALL_TIMEOUT)
        return list(response.trips)

    async def count(self, state: int) -> Count:
        seen, token = 0, ""
        while True:
            request = trip_pb.ListTripsRequest(state=state, page_size=500, page_token=token)  # type: ignore[arg-type]
            response = await self.stub.ListTrips(request, timeout=CALL_TIMEOUT)
            seen += len(response.trips)
            token = response.next_page_token
            if not token or seen >= COUNT_CAP:
                return Count(state, min(seen, COUNT_CAP), bool(token))

    async def counts(self) -> list[Count]:
        return list(await asyncio.gather(*(self.count(state) for state in STATES)))

    async def retry(self, trip_id: str) -> trip_pb.Trip:
        response = await self.stub.RetryTrip(trip_pb.RetryTripRequest(trip_id=trip_id), timeout=RETRY_WAIT)
        trip: trip_pb.Trip = response.trip
        return trip

    async def watch(self, trip_id: str) -> AsyncIterator[trip_pb.WatchTripResponse]:
        call = self.stub.WatchTrip(trip_pb.WatchTripRequest(trip_id=trip_id))
        try:
            async for message in call:
                yield message
        finally:
            call.cancel()


def apply(trip: trip_pb.Trip | None, message: trip_pb.WatchTripResponse) -> trip_pb.Trip:
    """The trip a WatchTrip client holds after one more message (pure)."""
    kind = message.WhichOneof("event")
    if kind == "snapshot" or trip is None:
        updated = trip_pb.Trip()
        updated.CopyFrom(message.snapshot)
        return updated
    updated = trip_pb.Trip()
    updated.CopyFrom(trip)
    if kind == "step":
        step = message.step.step
        for existing in updated.steps:
            if existing.name == step.name:
                existing.CopyFrom(step)
                break
        else:
            updated.steps.append(step)
        updated.state = message.step.trip_state
    else:
        updated.state = message.state.state
        if message.state.failure_reason:
            updated.failure_reason = message.state.failure_reason
        updated.update_time.CopyFrom(message.state.event_time)
    return updated
