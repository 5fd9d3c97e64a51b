"""OpenTelemetry tracing of one process, on only when an OTLP endpoint is configured.

Configuration is OpenTelemetry's own: OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), e.g. `http://127.0.0.1:4317`, turns tracing on and spans go
there over OTLP/gRPC; the exporter reads the other standard OTEL_EXPORTER_OTLP_* and OTEL_BSP_*
variables itself. OTEL_SDK_DISABLED=true turns it off whatever else is set. Each component is its
own `service.name` (tripmesh-coordinator, tripmesh-flight, ...).

When off, `Tracing.from_env` returns None and nothing happens: no OpenTelemetry module is imported,
no tracer provider exists, no interceptor is installed and no log processor added, so a call costs
exactly what it did before. When on, the maintained gRPC instrumentation (its aio server interceptor
and aio client interceptors, passed explicitly rather than patched in globally) carries the context in
W3C `traceparent` metadata, so one trip is one trace across the coordinator and all four services.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from services.kit.interceptors import TRIP_ID_METADATA
from services.kit.wrapping import Behaviour, rewrap

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

    from services.kit.metrics import Metrics

TRIP_ID_ATTRIBUTE = "tripmesh.trip_id"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def otlp_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP endpoint tracing would export to, or None when tracing is off."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    for variable in ENDPOINT_VARIABLES:
        if environ.get(variable, "").strip():
            return environ[variable].strip()
    return None


class Tracing:
    """One component's tracer provider and the gRPC interceptors that use it."""

    def __init__(self, component: str, provider: TracerProvider) -> None:
        self.component = component
        self.provider = provider

    @classmethod
    def from_env(cls, component: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
        if otlp_endpoint(environ) is None:
            return None
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return cls.with_exporter(component, OTLPSpanExporter(), batch=True)

    @classmethod
    def with_exporter(cls, component: str, exporter: SpanExporter, *, batch: bool) -> Tracing:
        """A provider exporting to `exporter`: batched in service, one span at a time in unit tests."""
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"tripmesh-{component}"}))
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        return cls(component, provider)

    def tracer(self, name: str) -> Tracer:
        return self.provider.get_tracer(name)

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Outermost first: the instrumentation's span, then the trip id put on it."""
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        return [aio_server_interceptor(tracer_provider=self.provider), TripIdSpanInterceptor()]  # type: ignore[no-untyped-call]

    def client_interceptors(self) -> Sequence[grpc.aio.ClientInterceptor]:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        return list(aio_client_interceptors(tracer_provider=self.provider))  # type: ignore[no-untyped-call]

    def shutdown(self) -> None:
        """Export what is still buffered, then stop."""
        self.provider.shutdown()


class TripIdSpanInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Puts the trip id the coordinator sends in metadata on the server span, so spans are found by trip."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        trip_id = next((str(v) for k, v in details.invocation_metadata or () if k == TRIP_ID_METADATA), "")
        if not trip_id:
            return handler
        return rewrap(handler, unary=lambda b: _tag_unary(b, trip_id), stream=lambda b: _tag_stream(b, trip_id))


def _tag_unary(behaviour: Behaviour, trip_id: str) -> Behaviour:
    from opentelemetry import trace

    async def wrapped(request: Any, context: Any) -> Any:
        trace.get_current_span().set_attribute(TRIP_ID_ATTRIBUTE, trip_id)
        return await behaviour(request, context)

    return wrapped


def _tag_stream(behaviour: Behaviour, trip_id: str) -> Behaviour:
    from opentelemetry import trace

    async def wrapped(request: Any, context: Any) -> Any:
        trace.get_current_span().set_attribute(TRIP_ID_ATTRIBUTE, trip_id)
        async for item in behaviour(request, context):
            yield item

    return wrapped


async def shut_down(metrics: Metrics | None, tracing: Tracing | None) -> None:
    """Stop serving a process's metrics and flush its last spans (the flush may wait on the network)."""
    if metrics is not None:
        metrics.close()
    if tracing is not None:
        await asyncio.to_thread(tracing.shutdown)
