"""Prometheus metrics of one process: its registry, its HTTP endpoint, and the gRPC server interceptor.

Each process (or each component of the in-process test mesh) has its own `Metrics`: a registry, the
gRPC server counters every service shares (`GrpcMetricsInterceptor`, installed by `build_server`),
and whatever the component adds (the coordinator's trip and step metrics, a participant's holds).
`serve` exposes it with prometheus-client's own HTTP server, in a thread beside the event loop.

Gauges that must be right after a restart are read from the database at scrape time (`DbGauge`): the
scrape thread runs the query on the service's own event loop and waits for it, so the async engine is
only ever used from its loop.

Configuration: TRIPMESH_<C>_METRICS_PORT (default 9100 coordinator, 9101 flight, 9102 hotel, 9103
payment, 9104 notify; 0 turns metrics off, no interceptor at all) and TRIPMESH_<C>_METRICS_HOST (the
service's own listen host). A port given explicitly that cannot be bound stops the process at start-up;
a default port that is taken (9100 is also node_exporter's) only turns metrics off, with a warning.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.kit.settings import env
from services.kit.wrapping import Behaviour, rewrap, split_method

log = structlog.get_logger("tripmesh.metrics")

DEFAULT_METRICS_PORTS = {
    "coordinator": 9100,
    "flight": 9101,
    "hotel": 9102,
    "payment": 9103,
    "notify": 9104,
    "car": 9105,
}
# Seconds; from a millisecond loopback call to a 10 s deadline.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class MetricsSettings:
    host: str
    port: int  # 0: off
    explicit: bool  # the port was configured, not the default

    @classmethod
    def from_env(cls, component: str, *, host: str) -> MetricsSettings:
        variable = f"TRIPMESH_{component.upper()}_METRICS_PORT"
        raw = os.environ.get(variable)
        port = DEFAULT_METRICS_PORTS[component] if raw is None else _port(variable, raw)
        return cls(host=env(component, "metrics_host", host), port=port, explicit=raw is not None)

    @property
    def enabled(self) -> bool:
        return self.port != 0


def _port(variable: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{variable} must be a port number (0 turns metrics off), got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{variable} must be between 0 and 65535, got {port}")
    return port


class Metrics:
    """One component's registry, with the gRPC server metrics every service shares."""

    def __init__(self, component: str, *, process: bool = True) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call] # no *_created series: they double the output and no dashboard reads them
        self.component = component
        self.registry = CollectorRegistry()
        self._server: Any = None
        self._thread: Any = None
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.grpc_handled = Counter(
            "tripmesh_grpc_server_handled",
            "gRPC calls this process answered, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self.grpc_seconds = Histogram(
            "tripmesh_grpc_server_handling_seconds",
            "Time this process took to answer a gRPC call, by service and method.",
            ["grpc_service", "grpc_method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def interceptor(self) -> GrpcMetricsInterceptor:
        return GrpcMetricsInterceptor(self)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0: any free port) in a thread; the port it listens on."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def serve_configured(self, settings: MetricsSettings) -> str | None:
        """Serve as configured; the address, or None when off or when a default port was taken."""
        if not settings.enabled:
            return None
        try:
            port = self.serve(settings.host, settings.port)
        except OSError as error:
            if settings.explicit:
                variable = f"TRIPMESH_{self.component.upper()}_METRICS_PORT"
                where = f"{settings.host}:{settings.port}"
                raise OSError(f"cannot serve metrics on {where} ({variable}): {error}") from error
            log.warning("metrics_off", port=settings.port, error=str(error), hint="set TRIPMESH_<C>_METRICS_PORT")
            return None
        address = f"{settings.host}:{port}"
        log.info("metrics_serving", address=f"http://{address}/metrics")
        return address

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every call by method and final status code, and times it. One for every service."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        service, method = split_method(details.method)
        return rewrap(
            handler,
            unary=lambda behaviour: self._unary(behaviour, service, method),
            stream=lambda behaviour: self._stream(behaviour, service, method),
        )

    def _observe(self, service: str, method: str, context: Any, fallback: str, started: float) -> None:
        # After context.abort (how every error leaves our handlers) the context knows the real code.
        code = context.code()
        name = fallback if code is None else code.name
        self._metrics.grpc_handled.labels(service, method, name).inc()
        self._metrics.grpc_seconds.labels(service, method).observe(time.perf_counter() - started)

    def _unary(self, behaviour: Behaviour, service: str, method: str) -> Behaviour:
        async def wrapped(request: Any, context: Any) -> Any:
            started, outcome = time.perf_counter(), "UNKNOWN"
            try:
                response = await behaviour(request, context)
                outcome = "OK"
                return response
            except asyncio.CancelledError:
                outcome = "CANCELLED"
                raise
            finally:
                self._observe(service, method, context, outcome, started)

        return wrapped

    def _stream(self, behaviour: Behaviour, service: str, method: str) -> Behaviour:
        async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
            started, outcome = time.perf_counter(), "UNKNOWN"
            try:
                async for item in behaviour(request, context):
                    yield item
                outcome = "OK"
            except asyncio.CancelledError:
                outcome = "CANCELLED"
                raise
            finally:
                self._observe(service, method, context, outcome, started)

        return wrapped


Query = Callable[[], Coroutine[Any, Any, Mapping[tuple[str, ...], float]]]


class DbGauge(Collector):
    """A gauge family read from the database when scraped, so it is right after any restart.

    `query` runs on `loop` (the service's, which owns the async engine); the scrape thread waits up to
    `timeout` seconds for it. `always` lists label values reported as 0 when the query finds none.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        query: Query,
        loop: asyncio.AbstractEventLoop,
        *,
        always: Sequence[tuple[str, ...]] = (),
        timeout: float = 5.0,
    ) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self._query, self._loop, self._always, self._timeout = query, loop, always, timeout

    def describe(self) -> Iterator[Metric]:
        # Registering calls describe(), not collect(): no query from the loop's own thread.
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labels)

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        if values is None:
            return
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for key in sorted({*self._always, *values}):
            family.add_metric(list(key), values.get(key, 0))
        yield family

    def _read(self) -> Mapping[tuple[str, ...], float] | None:
        if self._loop.is_closed():
            return None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            log.warning("metrics_query_skipped", metric=self.name, detail="scraped from the event loop's own thread")
            return None
        future = asyncio.run_coroutine_threadsafe(self._query(), self._loop)
        try:
            return future.result(self._timeout)
        except TimeoutError:
            future.cancel()
            log.warning("metrics_query_slow", metric=self.name, timeout=self._timeout)
        except Exception:  # the scrape answers without this family; the service goes on
            log.exception("metrics_query_failed", metric=self.name)
        return None
