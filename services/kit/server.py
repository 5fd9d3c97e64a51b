"""Build an aio gRPC server with health, reflection and the shared interceptor; run it until signalled.

Building is apart from running so that tests bind port 0 and drive the server in-process, while
`python -m services.<name>` runs the same server until SIGTERM/SIGINT. On a signal, health flips to
NOT_SERVING first, calls in flight get `grace_seconds` to finish, and background tasks are cancelled.

Security (README "Security"): with TLS configured (kit.tls) the port requires client certificates and
kit.authz keeps Reserve/Confirm/Cancel for the coordinator; every request passes kit.limits' guard
(decodable, within its field limits, no card number), and a message larger than
TRIPMESH_<C>_MAX_MESSAGE_BYTES (64 KiB) or more than TRIPMESH_<C>_MAX_CONCURRENT_RPCS calls at once
answers RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.kit.authz import CoordinatorOnly
from services.kit.faults import component_of, fault_interceptor
from services.kit.interceptors import ServerInterceptor
from services.kit.limits import RequestGuard
from services.kit.metrics import Metrics
from services.kit.settings import env_int
from services.kit.tls import tls_files
from services.kit.tracing import Tracing

log = structlog.get_logger("tripmesh.server")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # what a server may send (ListTrips pages)
MAX_RECEIVE_BYTES = 64 * 1024  # what it accepts: every request of the mesh fits in a few KiB
MAX_CONCURRENT_RPCS = 4096


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service: its full name (from the descriptor), its registrar and its servicer."""

    full_name: str
    register: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


@dataclass
class BuiltServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    service_names: list[str]
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()
    background: list[asyncio.Task[Any]] = field(default_factory=list)

    async def start(self) -> None:
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        await self.health.enter_graceful_shutdown()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.server.stop(grace)


def build_server(
    bindings: Sequence[ServiceBinding],
    *,
    address: str,
    domain: str,
    component: str | None = None,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
) -> BuiltServer:
    """`component` names the TRIPMESH_<COMPONENT>_FAULTS variable; by default it follows from `domain`.

    Interceptors, outermost first: the tracing span (when tracing is on), the gRPC metrics (when
    metrics are on: they see the final status code), the error interceptor, then injected faults
    (inside the error interceptor, so injected errors become rich statuses, counted and traced).
    """
    names = [b.full_name for b in bindings]
    component = component or component_of(domain)
    faults = fault_interceptor(component, names)
    tls = tls_files(component)
    # Inside the error interceptor (so refusals become rich statuses, counted and traced): the caller's
    # identity first (TLS on), then the request's limits, then injected faults.
    chain: list[grpc.aio.ServerInterceptor | None] = [
        *(tracing.server_interceptors() if tracing is not None else ()),
        metrics.interceptor() if metrics is not None else None,
        ServerInterceptor(domain),
        CoordinatorOnly() if tls is not None else None,
        RequestGuard(),
        faults,
    ]
    interceptors = tuple(i for i in chain if i is not None)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", env_int(component, "max_message_bytes", MAX_RECEIVE_BYTES)),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=env_int(component, "max_concurrent_rpcs", MAX_CONCURRENT_RPCS),
    )
    for binding in bindings:
        binding.register(binding.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    if tls is None:
        port = server.add_insecure_port(address)
        log.warning("plaintext", detail="TLS is off: anyone who reaches this port may call it; see TRIPMESH_TLS_DIR")
    else:
        port = server.add_secure_port(address, tls.server_credentials())
        log.info("mutual_tls", cert=str(tls.cert), ca=str(tls.ca), detail="client certificates required")
    if port == 0:
        raise RuntimeError(f"cannot listen on {address}")
    return BuiltServer(server=server, health=health_servicer, port=port, service_names=names, interceptors=interceptors)


async def serve_until_signalled(
    built: BuiltServer,
    *,
    grace_seconds: float,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Serve a started server until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving", port=built.port, services=built.service_names)
    await stop.wait()
    log.info("stopping", grace_seconds=grace_seconds)
    await built.stop(grace_seconds)
    if on_stop is not None:
        await on_stop()
    log.info("stopped")
