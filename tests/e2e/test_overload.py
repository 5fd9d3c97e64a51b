"""Several times the coordinator's capacity, offered at once for a bounded time, with a slowed participant.

`tripmesh up` with 4 trips driven at once and 8 allowed to wait (TRIPMESH_COORDINATOR_MAX_ACTIVE_TRIPS,
_MAX_PENDING_TRIPS) and every flight Reserve slowed by 150 ms, then 48 clients book new trips in a
closed loop for 6 s (a refused client tries again after 20 ms, a new trip id each time). It must hold:

- every answer is a trip or RESOURCE_EXHAUSTED (OVERLOADED) with a google.rpc.RetryInfo; nothing else;
- both happen (the offer really is beyond capacity, and accepted trips keep being served);
- every accepted trip ends terminal, and `tripmesh audit` finds no violation and no orphaned hold;
- a refused trip id was never written (GetTrip: NOT_FOUND);
- a repeat of an accepted trip id, sent while the coordinator is full, is answered with that trip, never
  refused (the coordinator reads the step log before refusing);
- the coordinator's resident memory stays bounded: it grows by less than 60 MB over its idle size and
  does not keep growing in the second half of the run.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.kit.status import error_info
from tests.support.processes import REPO, RunningMesh, tripmesh_command, tripmesh_up
from tripmesh.v1 import common_pb2 as common_pb
from tripmesh.v1 import flight_service_pb2 as flight_pb
from tripmesh.v1 import trip_coordinator_pb2 as trip_pb
from tripmesh.v1 import trip_coordinator_pb2_grpc as trip_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_ACTIVE, MAX_PENDING = 4, 8
CLIENTS = 48  # 4x what may be in the coordinator at once
SECONDS = 6.0
TERMINAL = {common_pb.TRIP_STATE_CONFIRMED, common_pb.TRIP_STATE_CANCELLED, common_pb.TRIP_STATE_NEEDS_ATTENTION}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    env = {
        "TRIPMESH_COORDINATOR_MAX_ACTIVE_TRIPS": str(MAX_ACTIVE),
        "TRIPMESH_COORDINATOR_MAX_PENDING_TRIPS": str(MAX_PENDING),
        "TRIPMESH_FLIGHT_FAULTS": json.dumps([{"method": "Reserve", "latency_ms": 150}]),
        "TRIPMESH_LOG_LEVEL": "warning",
    }
    with tripmesh_up(tmp_path_factory.mktemp("overload"), extra_env=env) as running:
        yield running


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Tally:
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    repeats: list[str] = field(default_factory=list)  # what each repeat of an accepted trip was answered
    rss: list[tuple[float, int]] = field(default_factory=list)


def request(trip_id: str) -> trip_pb.BookTripRequest:
    return trip_pb.BookTripRequest(
        trip_id=trip_id,
        customer=trip_pb.Customer(customer_id="cust-load", email="load@example.com"),
        flight=trip_pb.TripFlight(
            outbound_flight_id="TM101-20270316", cabin=flight_pb.CABIN_ECONOMY, passenger_count=1
        ),
        payment_method_id="pm_load_visa",
    )


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


async def offer(stub: trip_grpc.TripCoordinatorStub, client: int, until: float, tally: Tally) -> None:
    n = 0
    while time.monotonic() < until:
        trip_id = f"load-{client}-{n}"
        n += 1
        try:
            await stub.BookTrip(request(trip_id), timeout=30)
        except grpc.aio.AioRpcError as error:
            info = error_info(error)
            delay = retry_delay(error)
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and info and info.reason == "OVERLOADED" and delay:
                tally.refused.append(trip_id)
                await asyncio.sleep(0.02)
                continue
            tally.other.append(f"{trip_id}: {error.code().name} {error.details()}")
            continue
        tally.accepted.append(trip_id)


async def repeat_accepted(stub: trip_grpc.TripCoordinatorStub, until: float, tally: Tally) -> None:
    """Book an already accepted trip again, with the same request, while the offer goes on."""
    while time.monotonic() < until:
        await asyncio.sleep(0.3)
        if not tally.accepted:
            continue
        trip_id = tally.accepted[len(tally.repeats) % len(tally.accepted)]
        try:
            reply = await stub.BookTrip(request(trip_id), timeout=30)
            tally.repeats.append("answered" if reply.trip.trip_id == trip_id else f"{trip_id}: another trip")
        except grpc.aio.AioRpcError as error:
            tally.repeats.append(f"{trip_id}: {error.code().name} {error.details()}")


async def sample(pid: int, until: float, tally: Tally) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        tally.rss.append((time.monotonic() - start, rss_kib(pid)))
        await asyncio.sleep(0.2)


async def run_overload(mesh: RunningMesh, pid: int) -> Tally:
    tally = Tally()
    async with grpc.aio.insecure_channel(mesh.address("coordinator")) as channel:
        stub = trip_grpc.TripCoordinatorStub(channel)
        until = time.monotonic() + SECONDS
        await asyncio.gather(
            sample(pid, until, tally),
            repeat_accepted(stub, until, tally),
            *(offer(stub, c, until, tally) for c in range(CLIENTS)),
        )
        deadline = time.monotonic() + 60
        pending = set(tally.accepted)
        while pending and time.monotonic() < deadline:
            for trip_id in list(pending):
                reply = await stub.GetTrip(trip_pb.GetTripRequest(trip_id=trip_id), timeout=10)
                if reply.trip.state in TERMINAL:
                    pending.discard(trip_id)
            await asyncio.sleep(0.2)
        assert not pending, f"not terminal after 60 s: {sorted(pending)[:10]}"
        for trip_id in tally.refused[:: max(1, len(tally.refused) // 20)]:
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetTrip(trip_pb.GetTripRequest(trip_id=trip_id), timeout=10)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND, trip_id
    return tally


def test_overload_is_refused_with_retry_info_and_memory_stays_bounded(mesh: RunningMesh) -> None:
    pid = mesh.children["coordinator"].pid
    idle = rss_kib(pid)
    tally = asyncio.run(run_overload(mesh, pid))
    offered = len(tally.accepted) + len(tally.refused) + len(tally.other)
    peak = max(kib for _, kib in tally.rss)
    first_half = max(kib for t, kib in tally.rss if t < SECONDS / 2)
    print(
        f"\noverload: {CLIENTS} clients for {SECONDS:.0f} s against {MAX_ACTIVE} active + {MAX_PENDING} pending: "
        f"offered {offered}, accepted {len(tally.accepted)}, refused {len(tally.refused)}, other {len(tally.other)}; "
        f"coordinator RSS idle {idle // 1024} MiB, peak {peak // 1024} MiB (first half {first_half // 1024} MiB)"
    )
    assert not tally.other, tally.other[:10]
    assert tally.repeats and set(tally.repeats) == {"answered"}, tally.repeats
    assert tally.accepted and tally.refused, (len(tally.accepted), len(tally.refused))
    assert len(tally.refused) > len(tally.accepted), "the offer should be well beyond capacity"
    assert peak - idle < 60 * 1024, (idle, peak)
    assert peak - first_half < 20 * 1024, f"still growing: {first_half} KiB -> {peak} KiB"
    audit = subprocess.run(
        [*tripmesh_command(), "audit", "--var-dir", str(mesh.var_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
