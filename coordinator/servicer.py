"""TripCoordinator: proto in, coordinator calls, proto out; nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from coordinator.parse import parse_book_trip, parse_change_trip, parse_trip_id
from coordinator.service import TripService
from coordinator.trip import Trip, TripState
from coordinator.views import trip_to_proto
from coordinator.watch import TripWatcher
from coordinator.watch_hub import WatchHub
from coordinator.watch_views import watch_item_to_proto
from services.kit.errors import InvalidRequestError
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
REPLY_MARGIN_SECONDS = 0.05


class TripCoordinatorServicer(trip_grpc.TripCoordinatorServicer):
    def __init__(self, service: TripService) -> None:
        self.service = service
        self.watch_hub = WatchHub()
        service.engine.events.add(self.watch_hub)
        self.watcher = TripWatcher(self.watch_hub, service.get, service.engine.live)

    def _view(self, trip: Trip) -> trip_pb.Trip:
        return trip_to_proto(self.service.saga, trip, self.service.engine.sagas)

    async def BookTrip(
        self, request: trip_pb.BookTripRequest, context: grpc.aio.ServicerContext
    ) -> trip_pb.BookTripResponse:
        trip = await self.service.book(parse_book_trip(request), _wait(context))
        return trip_pb.BookTripResponse(trip=self._view(trip))

    async def RetryTrip(
        self, request: trip_pb.RetryTripRequest, context: grpc.aio.ServicerContext
    ) -> trip_pb.RetryTripResponse:
        trip = await self.service.retry(parse_trip_id(request.trip_id), _wait(context))
        return trip_pb.RetryTripResponse(trip=self._view(trip))

    async def ChangeTrip(
        self, request: trip_pb.ChangeTripRequest, context: grpc.aio.ServicerContext
    ) -> trip_pb.ChangeTripResponse:
        trip, change = await self.service.change(parse_change_trip(request), _wait(context))
        view = self._view(trip)
        return trip_pb.ChangeTripResponse(trip=view, change=view.changes[trip.operations.index(change)])

    async def CancelTrip(
        self, request: trip_pb.CancelTripRequest, context: grpc.aio.ServicerContext
    ) -> trip_pb.CancelTripResponse:
        trip = await self.service.cancel(parse_trip_id(request.trip_id), _wait(context))
        return trip_pb.CancelTripResponse(trip=self._view(trip))

    async def GetTrip(
        self, request: trip_pb.GetTripRequest, context: grpc.aio.ServicerContext
    ) -> trip_pb.GetTripResponse:
        trip = await self.service.get(parse_trip_id(request.trip_id))
        return trip_pb.GetTripResponse(trip=self._view(trip))

    async def WatchTrip(
        self, request: trip_pb.WatchTripRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[trip_pb.WatchTripResponse]:
        trip_id = parse_trip_id(request.trip_id)
        async for item in self.watcher.watch(trip_id):
            yield watch_item_to_proto(self.service.saga, trip_id, item)

    async def ListTrips(
        self, request: trip_pb.ListTripsRequest, context: grpc.aio.ServicerContext
    ) -> trip_pb.ListTripsResponse:
        if not 0 <= request.page_size <= MAX_PAGE_SIZE:
            raise InvalidRequestError.of("page_size", f"must be between 0 and {MAX_PAGE_SIZE}, got {request.page_size}")
        state = None
        if request.state not in common_pb.TripState.values():
            # An enum number this server does not know (found by tests/e2e/test_fuzz.py: it was INTERNAL).
            raise InvalidRequestError.of("state", f"{request.state} is not a TripState")
        if request.state != common_pb.TRIP_STATE_UNSPECIFIED:
            state = TripState(common_pb.TripState.Name(request.state).removeprefix("TRIP_STATE_"))
        trips, token = await self.service.list(
            state=state,
            customer_id=request.customer_id,
            page_size=request.page_size or DEFAULT_PAGE_SIZE,
            page_token=request.page_token,
        )
        return trip_pb.ListTripsResponse(trips=[self._view(t) for t in trips], next_page_token=token)


def _wait(context: grpc.aio.ServicerContext) -> float | None:
    """How long a call may wait for a trip's outcome: the caller's deadline less a margin to reply."""
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - REPLY_MARGIN_SECONDS)
