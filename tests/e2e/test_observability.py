"""Metrics and tracing of the real processes, as `tripmesh up` runs them, with a real OTLP receiver.

The test runs an OTLP/gRPC trace receiver in-process (opentelemetry-proto's TraceService on a free
port: what a collector or Jaeger listens with), points the mesh at it with the standard
OTEL_EXPORTER_OTLP_ENDPOINT, books a confirmed and a sold-out trip, and checks: the banner lists every
/metrics; scraping them over HTTP shows the trips and the refused Reserve's gRPC code; each trip is ONE
trace holding spans of the coordinator and all four services; log lines carry that trace's id, in the
coordinator and in the participant that refused.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import defaultdict
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.support.bookings import lisbon, vienna_sold_out
from tests.support.processes import RunningMesh, tripmesh_up
from tests.support.scrape import scrape
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICES = {f"tripmesh-{c}" for c in ("coordinator", "flight", "hotel", "payment", "notify")}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Keeps every span exported to it, with the service.name of the process that sent it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, trace_pb2.Span]] = []

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((attributes.get("service.name", "?"), span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def traces_of(self, trip_id: str) -> dict[str, list[tuple[str, trace_pb2.Span]]]:
        """trace id (hex) -> every span of each trace that has a span tagged with this trip."""
        with self.lock:
            spans = list(self.spans)
        tagged = {s.trace_id.hex() for _, s in spans if _attribute(s, "tripmesh.trip_id") == trip_id}
        traces: dict[str, list[tuple[str, trace_pb2.Span]]] = defaultdict(list)
        for service, span in spans:
            if span.trace_id.hex() in tagged:
                traces[span.trace_id.hex()].append((service, span))
        return traces


def _attribute(span: trace_pb2.Span, key: str) -> str | None:
    for attribute in span.attributes:
        if attribute.key == key:
            return str(attribute.value.string_value)
    return None


EXPECTED_CONFIRMED_SPANS = frozenset(
    {
        ("tripmesh-coordinator", "/tripmesh.v1.TripCoordinator/BookTrip"),
        ("tripmesh-coordinator", "flight.reserve"),
        ("tripmesh-coordinator", "flight.confirm"),
        ("tripmesh-payment", "/tripmesh.v1.PaymentService/Reserve"),
        ("tripmesh-payment", "/tripmesh.v1.PaymentService/Confirm"),
    }
)


def _wait_for_trace(
    receiver: Receiver,
    trip_id: str,
    services: set[str],
    timeout: float = 30.0,
    names: frozenset[tuple[str, str]] = frozenset(),
) -> list[tuple[str, trace_pb2.Span]]:
    """The trip's one trace, once spans of these processes, these (service, span name)s and the ended trip
    span have arrived (each process exports in batches: one's Reserve span may come a batch before its
    Confirm span)."""
    deadline = time.monotonic() + timeout
    while True:
        traces = receiver.traces_of(trip_id)
        if len(traces) == 1:
            (spans,) = traces.values()
            arrived = {(service, span.name) for service, span in spans}
            if (
                {service for service, _ in arrived} >= services
                and names <= arrived
                and any(name == "tripmesh.trip" for _, name in arrived)
            ):
                return spans
        if time.monotonic() > deadline:
            found = {t: sorted({(svc, s.name) for svc, s in spans}) for t, spans in traces.items()}
            raise AssertionError(f"no single complete trace for {trip_id} after {timeout} s: {found}")
        time.sleep(0.1)


def _json_logs(mesh: RunningMesh) -> list[dict[str, Any]]:
    lines = []
    for line in mesh.stderr().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def test_metrics_and_one_trace_per_trip_from_the_real_processes(tmp_path: Path) -> None:
    receiver = Receiver()
    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    otlp_port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    tag = uuid.uuid4().hex[:8]
    confirmed, sold_out = f"ok-{tag}", f"soldout-{tag}"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: export promptly for the test
        "TRIPMESH_LOG_FORMAT": "json",
    }
    try:
        with tripmesh_up(tmp_path, extra_env=env) as mesh:
            assert set(mesh.metrics) == {"coordinator", "flight", "hotel", "payment", "notify", "car"}, mesh.output()
            assert f"tracing: OTLP to http://127.0.0.1:{otlp_port}" in mesh.stdout()
            with grpc.insecure_channel(mesh.address("coordinator")) as channel:
                stub = trip_grpc.TripCoordinatorStub(channel)
                assert stub.BookTrip(lisbon(confirmed), timeout=30).trip.state == common_pb.TRIP_STATE_CONFIRMED
                assert stub.BookTrip(vienna_sold_out(sold_out), timeout=30).trip.state == common_pb.TRIP_STATE_CANCELLED

            coordinator = scrape(mesh.metrics["coordinator"])
            assert coordinator.get("tripmesh_trips_started_total") == 2
            assert coordinator.get("tripmesh_trips_finished_total", state="confirmed") == 1
            assert coordinator.get("tripmesh_trips_finished_total", state="cancelled") == 1
            assert coordinator.get("process_resident_memory_bytes") > 0  # the process collector, per process
            flight = scrape(mesh.metrics["flight"])
            reserve = {"grpc_service": "tripmesh.v1.FlightService", "grpc_method": "Reserve"}
            assert flight.get("tripmesh_grpc_server_handled_total", **reserve, grpc_code="OK") == 1
            assert flight.get("tripmesh_grpc_server_handled_total", **reserve, grpc_code="RESOURCE_EXHAUSTED") == 1
            assert flight.get("tripmesh_reservations", participant="flight", state="cancelled") == 0
            assert flight.get("tripmesh_reservations", participant="flight", state="confirmed") == 1

            spans = _wait_for_trace(receiver, confirmed, SERVICES, names=EXPECTED_CONFIRMED_SPANS)
            # sold out: flight refused, the hotel held in parallel is released; payment and notify never called
            refused = _wait_for_trace(receiver, sold_out, {"tripmesh-coordinator", "tripmesh-flight", "tripmesh-hotel"})
    finally:
        collector.stop(0)

    trace_id = spans[0][1].trace_id.hex()
    by_service: dict[str, list[str]] = defaultdict(list)
    for service, span in spans:
        by_service[service].append(span.name)
    assert set(by_service) == SERVICES
    assert "/tripmesh.v1.TripCoordinator/BookTrip" in by_service["tripmesh-coordinator"]
    assert {"flight.reserve", "flight.confirm"} <= set(by_service["tripmesh-coordinator"])
    assert set(by_service["tripmesh-payment"]) == {
        "/tripmesh.v1.PaymentService/Reserve",
        "/tripmesh.v1.PaymentService/Confirm",
    }
    print(f"trace {trace_id}: {len(spans)} spans: " + ", ".join(f"{s} {len(n)}" for s, n in sorted(by_service.items())))

    logs = _json_logs(mesh)
    # At info the coordinator logs how a trip ends (answered steps are at debug): that line carries the trace.
    mine = [line for line in logs if line.get("trip_id") == confirmed and line.get("event") == "trip_state"]
    assert [line["state"] for line in mine] == ["CONFIRMED"], mine[:3]
    assert {line.get("trace_id") for line in mine} == {trace_id}, mine[:3]
    refused_trace = refused[0][1].trace_id.hex()
    assert {service for service, _ in refused} == {"tripmesh-coordinator", "tripmesh-flight", "tripmesh-hotel"}
    assert refused_trace != trace_id
    flight_refusal = [line for line in logs if line.get("trip_id") == sold_out and line.get("event") == "rpc_refused"]
    assert [(line["service"], line.get("trace_id")) for line in flight_refusal] == [("flight", refused_trace)]
