"""Malformed and oversized requests to every RPC of every service, over real gRPC to real processes.

The mesh is `tripmesh up` (plaintext: the guard under test runs with TLS on or off). Requests are sent
as raw bytes through a generic `channel.unary_unary` with no serializers, so they can be anything:
random bytes, a message whose fields hold random, oversized or card-number-looking values, a valid
message cut short or with bytes flipped. Whatever arrives:

- the answer is never INTERNAL or UNKNOWN (a crash or an unhandled parse error);
- a refused call writes nothing: every database's `PRAGMA data_version` (which changes whenever another
  connection commits) is the same after the call as before it.

A message over the 64 KiB receive limit gets RESOURCE_EXHAUSTED, and bytes that do not decode get
INVALID_ARGUMENT, for every RPC.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.processes import RunningMesh, tripmesh_up
from tripmesh.v1 import (
    car_service_pb2,
    flight_service_pb2,
    hotel_service_pb2,
    notification_service_pb2,
    payment_service_pb2,
    trip_coordinator_pb2,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICES = {
    "coordinator": trip_coordinator_pb2.DESCRIPTOR.services_by_name["TripCoordinator"],
    "flight": flight_service_pb2.DESCRIPTOR.services_by_name["FlightService"],
    "hotel": hotel_service_pb2.DESCRIPTOR.services_by_name["HotelService"],
    "payment": payment_service_pb2.DESCRIPTOR.services_by_name["PaymentService"],
    "notify": notification_service_pb2.DESCRIPTOR.services_by_name["NotificationService"],
    "car": car_service_pb2.DESCRIPTOR.services_by_name["CarService"],
}
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
MAX_RECEIVE = 64 * 1024
EXAMPLES = 200


@dataclass(frozen=True)
class Rpc:
    component: str
    path: str
    input: pb_descriptor.Descriptor

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        return f"{self.component}{self.path}"


RPCS = [
    Rpc(component, f"/{method.containing_service.full_name}/{method.name}", method.input_type)
    for component, service in SERVICES.items()
    for method in [*service.methods, HEALTH.methods_by_name["Check"]]
]

SAMPLES = [
    "",
    "cust-ada",
    "pm_ada_visa",
    "ada@example.com",
    "TM101-20270315",
    "lis-alfama",
    "fuzz-1/flight",
    "EUR",
    "4242424242424242",
    "4242 4242 4242 4242",
    "\x00\ud7ff\u202e",
]


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _message(field.message_type, depth + 1) if depth < 3 else st.none()
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(
            st.text(max_size=40),
            st.sampled_from(SAMPLES),
            st.integers(200, 3000).map(lambda n: "x" * n),
        )
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 8)
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return st.integers(-(2**63), 2**63 - 1)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=False, width=32)
    return st.integers(-(2**31), 2**31 - 1)


def _message(descriptor: pb_descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    cls = message_factory.GetMessageClass(descriptor)
    fields = {f.name: st.none() | _value(f, depth) for f in descriptor.fields}

    def build(values: dict[str, Any]) -> Any:
        message = cls()
        for name, value in values.items():
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, name).CopyFrom(value)
            elif field.is_repeated:
                getattr(message, name).append(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries(fields).map(build)


def _payload(rpc: Rpc) -> st.SearchStrategy[bytes]:
    valid = _message(rpc.input).map(lambda m: m.SerializeToString())
    mangled = st.tuples(valid, st.integers(0, 200), st.binary(min_size=1, max_size=4)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + len(t[2]) :]
    )
    return st.one_of(valid, mangled, st.binary(max_size=200))


class Databases:
    """Read-only connections to every database of the mesh, for PRAGMA data_version."""

    def __init__(self, var_dir: Path, stack: ExitStack) -> None:
        self.connections = {
            path.stem: stack.enter_context(sqlite3.connect(f"file:{path}?mode=ro", uri=True))
            for path in sorted(var_dir.glob("*.db"))
        }
        assert len(self.connections) == 6, sorted(self.connections)

    def versions(self) -> dict[str, int]:
        return {name: conn.execute("PRAGMA data_version").fetchone()[0] for name, conn in self.connections.items()}

    def settle(self, timeout: float = 5.0) -> dict[str, int]:
        """Versions once nothing has been committed for 0.3 s (after a call that did write)."""
        deadline = time.monotonic() + timeout
        last = self.versions()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.versions()
            if now == last:
                return now
            last = now
        return last


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    with tripmesh_up(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


@pytest.fixture(scope="module")
def channels(mesh: RunningMesh) -> Iterator[dict[str, grpc.Channel]]:
    with ExitStack() as stack:
        yield {name: stack.enter_context(grpc.insecure_channel(mesh.address(name))) for name in SERVICES}


@pytest.fixture(scope="module")
def databases(mesh: RunningMesh) -> Iterator[Databases]:
    with ExitStack() as stack:
        dbs = Databases(mesh.var_dir, stack)
        dbs.settle()
        yield dbs


def call(channels: dict[str, grpc.Channel], rpc: Rpc, payload: bytes) -> grpc.StatusCode:
    method = channels[rpc.component].unary_unary(rpc.path)  # no serializers: raw bytes both ways
    try:
        method(payload, timeout=10)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_the_fuzzer_reaches_every_rpc_of_every_service() -> None:
    paths = {r.path for r in RPCS}
    for service in SERVICES.values():
        assert {f"/{service.full_name}/{m.name}" for m in service.methods} <= paths
    assert len(RPCS) >= 24, RPCS


def test_oversized_messages_are_refused_by_every_rpc(channels: dict[str, grpc.Channel], databases: Databases) -> None:
    # Field 1 (a string in every request here, or an unknown field) holding 70 KB: over the 64 KiB limit.
    body = b"x" * (MAX_RECEIVE + 6000)
    payload = b"\x0a" + _varint(len(body)) + body
    before = databases.versions()
    codes = {repr(rpc): call(channels, rpc, payload) for rpc in RPCS}
    assert {c for c in codes.values()} == {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert databases.versions() == before


def test_undecodable_bytes_are_invalid_argument_for_every_rpc(
    channels: dict[str, grpc.Channel], databases: Databases
) -> None:
    # Field 1 as a length-delimited value of 3 bytes that are not UTF-8, then a truncated varint.
    payload = b"\x0a\x03\xff\xfe\xfd\x10"
    before = databases.versions()
    codes = {repr(rpc): call(channels, rpc, payload) for rpc in RPCS}
    assert set(codes.values()) == {grpc.StatusCode.INVALID_ARGUMENT}, codes
    assert databases.versions() == before


@st.composite
def rpc_and_payload(draw: st.DrawFn) -> tuple[Rpc, bytes]:
    rpc = draw(st.sampled_from(RPCS))
    return rpc, draw(_payload(rpc))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=rpc_and_payload())
def test_fuzzed_requests_never_crash_and_refusals_write_nothing(
    channels: dict[str, grpc.Channel], databases: Databases, case: tuple[Rpc, bytes]
) -> None:
    rpc, payload = case
    before = databases.versions()
    code = call(channels, rpc, payload)
    assert code not in NEVER, f"{rpc} answered {code.name} to {payload!r}"
    after = databases.versions()
    if code is not grpc.StatusCode.OK:
        assert after == before, f"{rpc} refused ({code.name}) yet wrote: {before} -> {after}; payload {payload!r}"
    elif after != before:
        databases.settle()  # an accepted call may go on writing (a trip's saga, a mail's delivery)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def test_an_unknown_enum_number_is_invalid_argument(channels: dict[str, grpc.Channel]) -> None:
    # What the fuzzer found: ListTrips with state -1 (field 1, varint) was INTERNAL (TripState.Name raised).
    [list_trips] = [r for r in RPCS if r.path.endswith("/ListTrips")]
    for number in (2**64 - 1, 99):
        assert call(channels, list_trips, b"\x08" + _varint(number)) is grpc.StatusCode.INVALID_ARGUMENT
