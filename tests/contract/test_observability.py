"""Metrics and tracing on the in-process mesh: real servers, real /metrics over HTTP, real spans.

Every component serves its own /metrics on a free port; the tests book a confirmed, a compensated
(declined card) and a sold-out trip, scrape over HTTP as Prometheus does and check what moved. The
holds gauge is compared with the audit's count of every participant database, also after a restart.
Tracing uses the SDK's in-memory exporter, one provider per component (as one per process).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coordinator.audit import audit
from services.kit.tracing import Tracing
from tests.support.bookings import lisbon, vienna_sold_out
from tests.support.mesh import Mesh, start_mesh
from tests.support.scrape import Samples, scrape
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb

pytestmark = pytest.mark.contract

PARTICIPANTS = ("flight", "hotel", "payment", "notify")


async def book(mesh: Mesh, request: trip_pb.BookTripRequest) -> trip_pb.Trip:
    return (await mesh.stub.BookTrip(request, timeout=30)).trip


async def scrape_async(mesh: Mesh, component: str) -> Samples:
    # Off the event loop: the holds and open-trips gauges run their query on this loop while we wait.
    return await asyncio.to_thread(scrape, f"127.0.0.1:{mesh.metrics_ports[component]}")


@pytest.fixture
async def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Mesh]:
    running = await start_mesh(tmp_path, monkeypatch, metrics=True)
    try:
        yield running
    finally:
        await running.stop()


async def test_metrics_move_as_trips_confirm_and_compensate(mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:8]
    assert (await book(mesh, lisbon(f"ok-{tag}"))).state == common_pb.TRIP_STATE_CONFIRMED
    assert (await book(mesh, lisbon(f"declined-{tag}", "pm_ada_declined"))).state == common_pb.TRIP_STATE_CANCELLED
    assert (await book(mesh, vienna_sold_out(f"soldout-{tag}"))).state == common_pb.TRIP_STATE_CANCELLED

    c = await scrape_async(mesh, "coordinator")
    assert c.get("tripmesh_trips_started_total") == 3
    assert c.get("tripmesh_trips_finished_total", state="confirmed") == 1
    assert c.get("tripmesh_trips_finished_total", state="cancelled") == 2
    assert c.get("tripmesh_trips_finished_total", state="needs_attention") == 0
    assert c.get("tripmesh_compensations_total") == 2
    assert c.get("tripmesh_trips_in_flight") == 0
    assert c.get("tripmesh_trip_duration_seconds_count", state="cancelled") == 2
    assert c.get("tripmesh_trips_open", state="needs_attention") == 0
    assert c.get("tripmesh_trips_open", state="reserving") == 0
    step = "tripmesh_step_duration_seconds_count"
    assert c.get(step, step="flight.reserve", outcome="ok") == 2  # confirmed + declined
    assert c.get(step, step="flight.reserve", outcome="refused") == 1  # sold out
    assert c.get(step, step="payment.reserve", outcome="refused") == 1  # declined
    assert c.get(step, step="payment.confirm", outcome="ok") == 1
    assert c.get(step, step="hotel.cancel", outcome="ok") == 2  # both compensations release the hotel
    assert c.get(step, step="flight.cancel", outcome="ok") == 1  # only the declined trip held a seat
    assert sum(c.matching("tripmesh_step_retries_total").values()) == 0
    # The coordinator's own server: three BookTrip calls answered OK.
    assert (
        c.get(
            "tripmesh_grpc_server_handled_total",
            grpc_service="tripmesh.v1.TripCoordinator",
            grpc_method="BookTrip",
            grpc_code="OK",
        )
        == 3
    )

    flight = await scrape_async(mesh, "flight")
    handled = "tripmesh_grpc_server_handled_total"
    service = "tripmesh.v1.FlightService"
    assert flight.get(handled, grpc_service=service, grpc_method="Reserve", grpc_code="OK") == 2
    assert flight.get(handled, grpc_service=service, grpc_method="Reserve", grpc_code="RESOURCE_EXHAUSTED") == 1
    assert flight.get(handled, grpc_service=service, grpc_method="Cancel", grpc_code="OK") == 1
    assert flight.get("tripmesh_grpc_server_handling_seconds_count", grpc_service=service, grpc_method="Reserve") == 3
    payment = await scrape_async(mesh, "payment")
    assert (
        payment.get(
            handled, grpc_service="tripmesh.v1.PaymentService", grpc_method="Reserve", grpc_code="FAILED_PRECONDITION"
        )
        == 1
    )
    assert "tripmesh_trips_started_total" not in flight.names()  # each process exposes its own


async def test_holds_gauge_matches_every_database_and_survives_a_restart(mesh: Mesh) -> None:
    tag = uuid.uuid4().hex[:8]
    await book(mesh, lisbon(f"ok-{tag}"))
    await book(mesh, lisbon(f"declined-{tag}", "pm_ada_declined"))
    report = await audit(mesh.coordinator.db, mesh.engines)

    async def gauges() -> dict[str, dict[str, float]]:
        found = {}
        for name in PARTICIPANTS:
            samples = (await scrape_async(mesh, name)).matching("tripmesh_reservations", participant=name)
            found[name] = {dict(key)["state"].upper(): value for key, value in samples.items() if value}
        return found

    expected = {name: {status: float(n) for status, n in report.holds.get(name, {}).items()} for name in PARTICIPANTS}
    assert expected["flight"] == {"CONFIRMED": 1.0, "CANCELLED": 1.0}
    assert await gauges() == expected
    await mesh.restart_participant("flight")  # a fresh process would start counting from nothing
    assert await gauges() == expected


async def test_one_trace_per_trip_across_the_coordinator_and_all_four_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    running = await start_mesh(
        tmp_path, monkeypatch, tracing=lambda name: Tracing.with_exporter(name, exporter, batch=False)
    )
    try:
        trip_id = f"traced-{uuid.uuid4().hex[:8]}"
        assert (await book(running, lisbon(trip_id))).state == common_pb.TRIP_STATE_CONFIRMED
        await asyncio.sleep(0)  # the BookTrip server span ends once the answer is sent
    finally:
        await running.stop()
    spans = exporter.get_finished_spans()
    trip_span = next(s for s in spans if s.name == "tripmesh.trip" and _attr(s, "tripmesh.trip_id") == trip_id)
    trace_id = trip_span.context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    services = {str(s.resource.attributes["service.name"]) for s in in_trace}
    assert services == {f"tripmesh-{c}" for c in ("coordinator", *PARTICIPANTS)}
    names = {s.name for s in in_trace}
    assert {"flight.reserve", "hotel.reserve", "payment.reserve", "payment.confirm", "notify.confirm"} <= names
    assert "/tripmesh.v1.FlightService/Reserve" in names  # the participant's server span, via metadata
    assert "/tripmesh.v1.TripCoordinator/BookTrip" in names  # the trip span's parent
    by_id = {s.context.span_id: s for s in in_trace}
    reserve_server = next(s for s in in_trace if s.name == "/tripmesh.v1.FlightService/Reserve")
    assert _attr(reserve_server, "tripmesh.trip_id") == trip_id
    chain = []
    span: ReadableSpan | None = reserve_server
    while span is not None:
        chain.append(span.name)
        span = by_id.get(span.parent.span_id) if span.parent is not None else None
    # server span <- client span (instrumentation) <- step span <- trip span <- BookTrip server span
    assert chain[2:4] == ["flight.reserve", "tripmesh.trip"], chain
    assert chain[-1] == "/tripmesh.v1.TripCoordinator/BookTrip", chain
    # the call's step span carries the outcome
    step = next(s for s in in_trace if s.name == "payment.confirm")
    assert _attr(step, "tripmesh.outcome") == "OK"


def _attr(span: ReadableSpan, key: str) -> object:
    return (span.attributes or {}).get(key)


def test_tracing_off_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    """No endpoint: no provider, no interceptor, and not one OpenTelemetry module loaded by the services."""
    code = (
        "import asyncio, sys\n"
        "from services.kit.tracing import Tracing\n"
        "from coordinator.app import start_coordinator\n"
        "from services.participant.runner import start_participant\n"
        "from services.flight.app import SPEC\n"
        "from services.kit import logging as kit_logging\n"
        "assert Tracing.from_env('flight') is None\n"
        "kit_logging.configure('flight', trace_ids=False)\n"
        f"async def main():\n"
        f"    p = await start_participant(SPEC, database_url='sqlite+aiosqlite:///{tmp_path}/f.db')\n"
        "    names = [type(i).__name__ for i in p.built.interceptors]\n"
        "    await p.stop(0)\n"
        "    print(names)\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    interceptors, modules = out.stdout.strip().splitlines()[-2:]
    assert interceptors == "['ServerInterceptor', 'RequestGuard']"  # the request guard (kit.limits) is always on
    assert modules == "[]"
