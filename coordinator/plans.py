"""What the planners answer (coordinator/planner.py for bookings, coordinator/operations.py for changes and
cancellations of booked trips): send some steps, write a new state, or nothing more to do (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.trip import OperationOutcome, Step, StepStatus, TripState


@dataclass(frozen=True)
class Call:
    """Send these steps, in parallel."""

    steps: tuple[str, ...]


@dataclass(frozen=True)
class Transition:
    """Write the trip's new state durably (CONFIRMING is the commit decision)."""

    state: TripState
    reason: str = ""
    outcome: OperationOutcome | None = None  # how the change or cancellation under way ends, if it does


@dataclass(frozen=True)
class Done:
    pass


Plan = Call | Transition | Done

SETTLED = (StepStatus.SUCCEEDED, StepStatus.REFUSED, StepStatus.FAILED)
COMPENSATION_FAILED = "compensation failed: "


def failure_reason(name: str, step: Step) -> str:
    verb = "was refused" if step.status is StepStatus.REFUSED else "kept failing"
    detail = " ".join(x for x in (step.error_code, step.error_reason) if x)
    message = f": {step.error_message}" if step.error_message else ""
    return f"{name} {verb} ({detail}){message}" if detail else f"{name} {verb}{message}"
