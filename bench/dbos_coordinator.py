"""The trip saga as a DBOS Transact workflow, serving the same tripmesh.v1.TripCoordinator/BookTrip.

The benchmark's peer (c): what a Python user would write instead of tripmesh. It shares everything but
the durable-execution engine with tripmesh's coordinator: the request parsing (coordinator/parse.py),
the saga definition and the pure planner that decides the next move (coordinator/saga.py,
coordinator/planner.py), the participant requests (coordinator/requests.py), the participant clients
with their long-lived channels and status classification (coordinator/participants.py), the gRPC
server with its interceptor, health and reflection (services/kit/server.py) and the answer
(coordinator/views.py). BookTrip starts a `@DBOS.workflow()` whose id is the trip id (the idempotency
key) and waits for its result. The workflow asks the planner what to do next and runs each group of
participant calls as `@DBOS.step()`s in parallel (asyncio.gather over step calls made in a fixed
order, so DBOS numbers them the same way on replay); compensation runs in reverse, as the planner says.

DBOS keeps its checkpoints in its own system database: SQLite here (DBOS 3.x supports it, in the
file `TRIPMESH_DBOS_SYSTEM_DATABASE_URL` names), written with DBOS's defaults: the workflow's inputs
when it starts, every step's output when the step ends, the workflow's output when it ends. Transient
and unknown outcomes raise, so DBOS's own step retries (same budgets and first backoff as tripmesh's
RetryPolicy) resend them; a refusal is an ordinary step output. A step that runs out of retries is
FAILED, as in tripmesh.

Only BookTrip is served (GetTrip, ListTrips and RetryTrip answer UNIMPLEMENTED): the benchmark needs no
more. The planner's trip deadline is not used (its clock would make the workflow non-deterministic on
replay); a DBOS user would set a workflow timeout instead.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from dbos import DBOS, DBOSConfig, SetWorkflowID
from dbos._error import DBOSMaxStepRetriesExceeded

from coordinator.engine import RetryPolicy
from coordinator.parse import parse_book_trip
from coordinator.participants import OutcomeKind, Participants
from coordinator.planner import Call, Done, Transition, plan
from coordinator.requests import build_request
from coordinator.saga import TRIP_SAGA
from coordinator.settings import CoordinatorSettings
from coordinator.trip import Action, Step, StepStatus, Trip, TripRequest, TripState
from coordinator.views import trip_to_proto
from services.kit import logging as kit_logging
from services.kit.server import ServiceBinding, build_server, serve_until_signalled
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

SERVICE_NAME = trip_pb.DESCRIPTOR.services_by_name["TripCoordinator"].full_name
POLICY = RetryPolicy()
REPLY_MARGIN_SECONDS = 0.05


class _State:
    participants: Participants | None = None


STATE = _State()


class RetryableCallError(Exception):
    """A transient or unknown outcome: DBOS retries the step."""


def _should_retry(error: BaseException) -> bool:
    return isinstance(error, RetryableCallError)


async def _call(step_name: str, request: Any, trip_id: str) -> dict[str, Any]:
    participants = STATE.participants
    assert participants is not None
    started = datetime.now(UTC)
    outcome = await participants.call(step_name, request, trip_id)
    if outcome.kind in (OutcomeKind.TRANSIENT, OutcomeKind.UNKNOWN):
        raise RetryableCallError(f"{step_name}: {outcome.kind.value} {outcome.code} {outcome.message}")
    return {
        "kind": outcome.kind.value,
        "code": outcome.code,
        "reason": outcome.reason,
        "message": outcome.message,
        "result": outcome.result,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
    }


_RETRY = {"retries_allowed": True, "interval_seconds": POLICY.initial_backoff, "backoff_rate": 2.0}


@DBOS.step(name="reserve", max_attempts=POLICY.reserve_attempts, should_retry=_should_retry, **_RETRY)  # type: ignore[arg-type]
async def reserve_step(step_name: str, request: Any, trip_id: str) -> dict[str, Any]:
    return await _call(step_name, request, trip_id)


@DBOS.step(name="confirm", max_attempts=POLICY.confirm_attempts, should_retry=_should_retry, **_RETRY)  # type: ignore[arg-type]
async def confirm_step(step_name: str, request: Any, trip_id: str) -> dict[str, Any]:
    return await _call(step_name, request, trip_id)


@DBOS.step(name="cancel", max_attempts=POLICY.cancel_attempts, should_retry=_should_retry, **_RETRY)  # type: ignore[arg-type]
async def cancel_step(step_name: str, request: Any, trip_id: str) -> dict[str, Any]:
    return await _call(step_name, request, trip_id)


STEP_FUNCTIONS = {Action.RESERVE: reserve_step, Action.CONFIRM: confirm_step, Action.CANCEL: cancel_step}


def _apply(step: Step, output: dict[str, Any] | BaseException) -> None:
    if isinstance(output, BaseException):
        step.status = StepStatus.FAILED
        step.attempts = POLICY.attempts(step.action)
        step.error_code, step.error_message = "UNAVAILABLE", str(output)
        step.finished_at = datetime.now(UTC)
        return
    step.started_at = datetime.fromisoformat(output["started_at"])
    step.finished_at = datetime.fromisoformat(output["finished_at"])
    if output["kind"] == OutcomeKind.OK.value:
        step.status, step.result = StepStatus.SUCCEEDED, output["result"]
    else:
        step.status = StepStatus.REFUSED
        step.error_code, step.error_reason, step.error_message = output["code"], output["reason"], output["message"]


@DBOS.workflow(name="book_trip")
async def book_trip_workflow(request_json: dict[str, Any], created_at: str) -> dict[str, Any]:
    created = datetime.fromisoformat(created_at)
    trip = Trip(
        request=TripRequest.from_json(request_json),
        state=TripState.RESERVING,
        created_at=created,
        updated_at=created,
        deadline_at=created + timedelta(days=3650),
        definition_version=TRIP_SAGA.version,
    )
    while True:
        next_plan = plan(TRIP_SAGA, trip, created)
        if isinstance(next_plan, Done):
            break
        if isinstance(next_plan, Transition):
            trip.state = next_plan.state
            trip.failure_reason = next_plan.reason or trip.failure_reason
            continue
        assert isinstance(next_plan, Call)
        calls = []
        for name in next_plan.steps:  # in order: DBOS numbers the steps as they are called
            step = Step(name=name, seq=len(trip.steps) + 1, status=StepStatus.STARTED, attempts=1, started_at=created)
            trip.steps[name] = step
            request = build_request(TRIP_SAGA, trip, name)
            calls.append(STEP_FUNCTIONS[step.action](name, request, trip.trip_id))
        outputs = await asyncio.gather(*calls, return_exceptions=True)
        for name, output in zip(next_plan.steps, outputs, strict=True):
            if isinstance(output, BaseException) and not isinstance(output, DBOSMaxStepRetriesExceeded):
                raise output
            _apply(trip.steps[name], output)
    return {
        "state": trip.state.value,
        "failure_reason": trip.failure_reason,
        "steps": [_step_json(s) for s in trip.ordered_steps()],
    }


def _step_json(step: Step) -> dict[str, Any]:
    return {
        "name": step.name,
        "seq": step.seq,
        "status": step.status.value,
        "attempts": step.attempts,
        "started_at": step.started_at.isoformat(),
        "finished_at": step.finished_at.isoformat() if step.finished_at else None,
        "error_code": step.error_code,
        "error_reason": step.error_reason,
        "error_message": step.error_message,
        "result": step.result,
    }


def _trip(request: TripRequest, created: datetime, result: dict[str, Any] | None) -> Trip:
    trip = Trip(
        request=request,
        state=TripState.RESERVING,
        created_at=created,
        updated_at=datetime.now(UTC),
        deadline_at=created + timedelta(days=3650),
        definition_version=TRIP_SAGA.version,
    )
    if result is None:
        return trip
    trip.state, trip.failure_reason = TripState(result["state"]), result["failure_reason"]
    for data in result["steps"]:
        finished = data["finished_at"]
        trip.steps[data["name"]] = Step(
            name=data["name"],
            seq=data["seq"],
            status=StepStatus(data["status"]),
            attempts=data["attempts"],
            started_at=datetime.fromisoformat(data["started_at"]),
            finished_at=datetime.fromisoformat(finished) if finished else None,
            error_code=data["error_code"],
            error_reason=data["error_reason"],
            error_message=data["error_message"],
            result=data["result"],
        )
    return trip


class DbosTripCoordinator(trip_grpc.TripCoordinatorServicer):
    def __init__(self, book_wait: float) -> None:
        self.book_wait = book_wait

    async def BookTrip(
        self, request: trip_pb.BookTripRequest, context: grpc.aio.ServicerContext
    ) -> trip_pb.BookTripResponse:
        trip_request = parse_book_trip(request)
        created = datetime.now(UTC)
        with SetWorkflowID(trip_request.trip_id):
            handle = await DBOS.start_workflow_async(book_trip_workflow, trip_request.to_json(), created.isoformat())
        remaining = context.time_remaining()
        wait = self.book_wait if remaining is None else max(0.0, remaining - REPLY_MARGIN_SECONDS)
        try:
            result = await asyncio.wait_for(asyncio.shield(handle.get_result()), wait)
        except TimeoutError:
            result = None
        return trip_pb.BookTripResponse(trip=trip_to_proto(TRIP_SAGA, _trip(trip_request, created, result)))


async def _main() -> None:
    settings = CoordinatorSettings.from_env()
    kit_logging.configure("dbos-coordinator", fmt=settings.service.log_format, level=settings.service.log_level)
    var_dir = os.environ.get("TRIPMESH_VAR_DIR", "var")
    config: DBOSConfig = {
        "name": "tripmesh-dbos",
        "system_database_url": os.environ.get("TRIPMESH_DBOS_SYSTEM_DATABASE_URL", f"sqlite:///{var_dir}/dbos.sqlite"),
    }
    DBOS(config=config)
    DBOS.launch()
    STATE.participants = Participants(settings.addresses, call_timeout=settings.call_timeout)
    built = build_server(
        [
            ServiceBinding(
                SERVICE_NAME, trip_grpc.add_TripCoordinatorServicer_to_server, DbosTripCoordinator(settings.book_wait)
            )
        ],
        address=f"{settings.service.host}:{settings.service.port}",
        domain=SERVICE_NAME,
    )
    await built.start()

    async def close() -> None:
        if STATE.participants is not None:
            await STATE.participants.close()
        DBOS.destroy(workflow_completion_timeout_sec=0)

    await serve_until_signalled(built, grace_seconds=settings.service.grace_seconds, on_stop=close)


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
