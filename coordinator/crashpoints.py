"""Crash injection at named points of the saga, for the crash-point and chaos tests.

`TRIPMESH_COORDINATOR_CRASH_AT` holds comma-separated points `<point>:<name>[#<n>]`; the coordinator
kills itself with SIGKILL (no cleanup, no flush: a real crash) the n-th time (default the first) it
reaches one:

    before_intent:<step>   the step's intent (with the trip's pending writes) is about to be flushed
    after_intent:<step>    its intent is durable, the call not sent
    after_call:<step>      the participant answered; the outcome is known only in memory
    after_outcome:<step>   the outcome is recorded, pending: durable with the trip's next flush
    after_state:<STATE>    the trip took the state; a final state is durable, another one pending
                           (after_state:CONFIRMING is the commit decision, made durable with the first
                           Confirm's intent)

A step of a change or a cancellation carries its revision: `after_intent:hotel.reserve@2`.

Unset (the default), the engine holds no CrashPoints at all and pays nothing.
"""

from __future__ import annotations

import os
import signal

import structlog

log = structlog.get_logger("tripmesh.crash")

POINTS = frozenset({"before_intent", "after_intent", "after_call", "after_outcome", "after_state"})


class CrashPoints:
    def __init__(self, spec: str) -> None:
        self._targets: dict[tuple[str, str], int] = {}
        self._seen: dict[tuple[str, str], int] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, rest = item.partition(":")
            name, _, nth = rest.partition("#")
            if point not in POINTS or not name:
                raise ValueError(
                    f"TRIPMESH_COORDINATOR_CRASH_AT: {item!r} is not <point>:<name>[#n] with point one of "
                    f"{', '.join(sorted(POINTS))}"
                )
            self._targets[(point, name)] = int(nth or 1)

    @classmethod
    def from_env(cls) -> CrashPoints | None:
        spec = os.environ.get("TRIPMESH_COORDINATOR_CRASH_AT", "")
        return cls(spec) if spec.strip() else None

    def hit(self, point: str, name: str) -> None:
        key = (point, name)
        target = self._targets.get(key)
        if target is None:
            return
        self._seen[key] = self._seen.get(key, 0) + 1
        if self._seen[key] == target:
            log.warning("crash_injected", point=point, name=name)
            os.kill(os.getpid(), signal.SIGKILL)
