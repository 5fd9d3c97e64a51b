"""The coordinator's configuration (TRIPMESH_COORDINATOR_*), with the documented defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.engine import RetryPolicy
from coordinator.lease import LeaseTiming
from coordinator.participants import Addresses
from services.kit.settings import DEFAULT_PORTS, ServiceSettings, env, env_bool, env_float, env_int


@dataclass(frozen=True)
class CoordinatorSettings:
    service: ServiceSettings
    addresses: Addresses
    call_timeout: float  # seconds per participant call
    trip_timeout: float  # a trip still reserving after this long compensates
    book_wait: float  # how long BookTrip waits for the outcome when the caller set no deadline
    policy: RetryPolicy
    # "off" writes no step log at all: the benchmark's limit of this stack, never for real use.
    step_log: str = "on"
    max_active_trips: int = 256
    # Replicas (coordinator/lease.py): "" names this process <hostname>:<port>.
    replica_id: str = ""
    lease: LeaseTiming = field(default_factory=LeaseTiming)
    # New trips waiting for one of max_active_trips' slots; beyond it BookTrip answers RESOURCE_EXHAUSTED.
    max_pending_trips: int = 1024
    migrate: bool = True  # upgrade the step log's schema on start (else only check it is current)

    @classmethod
    def from_env(cls) -> CoordinatorSettings:
        c = "coordinator"
        return cls(
            service=ServiceSettings.from_env(c),
            addresses=Addresses(
                **{
                    name: env(c, f"{name}_address", f"127.0.0.1:{DEFAULT_PORTS[name]}")
                    for name in ("flight", "hotel", "payment", "notify", "car")
                }
            ),
            call_timeout=env_float(c, "call_timeout_seconds", 5.0),
            trip_timeout=env_float(c, "trip_timeout_seconds", 300.0),
            book_wait=env_float(c, "book_wait_seconds", 30.0),
            policy=RetryPolicy(
                reserve_attempts=env_int(c, "reserve_attempts", 4),
                confirm_attempts=env_int(c, "confirm_attempts", 30),
                cancel_attempts=env_int(c, "cancel_attempts", 30),
                initial_backoff=env_float(c, "initial_backoff_seconds", 0.05),
                max_backoff=env_float(c, "max_backoff_seconds", 2.0),
            ),
            step_log=env(c, "step_log", "on"),
            max_active_trips=env_int(c, "max_active_trips", 256),
            replica_id=env(c, "replica_id", ""),
            lease=LeaseTiming(
                lease_seconds=env_float(c, "lease_seconds", 10.0),
                renew_seconds=env_float(c, "lease_renew_seconds", 0.0),
                takeover_seconds=env_float(c, "takeover_scan_seconds", 0.0),
            ),
            max_pending_trips=env_int(c, "max_pending_trips", 1024),
            migrate=env_bool(c, "migrate", True),
        )
