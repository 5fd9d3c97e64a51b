"""WatchTrip's items to WatchTripResponse messages (adapter)."""

from __future__ import annotations

from coordinator.saga import SagaDefinition
from coordinator.trip import TripState
from coordinator.views import step_to_proto, timestamp, trip_to_proto
from coordinator.watch import Snapshot, StateUpdate, StepUpdate, WatchItem
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb


def _state(state: TripState) -> common_pb.TripState.ValueType:
    return common_pb.TripState.Value(f"TRIP_STATE_{state.value}")


def watch_item_to_proto(saga: SagaDefinition, trip_id: str, item: WatchItem) -> trip_pb.WatchTripResponse:
    if isinstance(item, Snapshot):
        return trip_pb.WatchTripResponse(snapshot=trip_to_proto(saga, item.trip))
    if isinstance(item, StepUpdate):
        return trip_pb.WatchTripResponse(
            step=trip_pb.TripStepEvent(
                step=step_to_proto(saga, trip_id, item.step),
                trip_state=_state(item.trip_state),
                outcome=item.outcome,
                event_time=timestamp(item.at),
            )
        )
    assert isinstance(item, StateUpdate)
    return trip_pb.WatchTripResponse(
        state=trip_pb.TripStateEvent(
            previous_state=_state(item.previous),
            state=_state(item.state),
            failure_reason=item.reason,
            event_time=timestamp(item.at),
        )
    )
