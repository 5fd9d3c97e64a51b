"""Probe a process of the mesh: gRPC health (grpc.health.v1.Health/Check) or a plain TCP connect.

`python -m services.kit.healthcheck 127.0.0.1:50051` exits 0 when the server answers SERVING and 1
otherwise, with the reason on stderr (with TLS on, kit.tls, it presents the `client` certificate);
`--tcp 127.0.0.1:2525` only checks that something accepts a connection (the SMTP sink).
docker-compose.yml uses it as every container's healthcheck, and coordinator/launcher.py uses the
same functions while it waits for the processes it starts.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit.tls import client_tls, sync_channel

SERVING = health_pb2.HealthCheckResponse.SERVING


class ProbeError(Exception):
    """Why a probe did not succeed, for a person."""


def split_address(address: str) -> tuple[str, int]:
    """'host:port' -> (host, port); a wildcard host (0.0.0.0, [::]) becomes the loopback address."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return host, int(port)


def connect_address(address: str) -> str:
    """The address to dial for a listen address ('0.0.0.0:50051' -> '127.0.0.1:50051')."""
    host, port = split_address(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_grpc(address: str, *, service: str = "", timeout: float = 2.0) -> None:
    """Raise ProbeError unless the gRPC server at address reports `service` ('' = the server) SERVING."""
    with sync_channel(connect_address(address), client_tls()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            raise ProbeError(f"{error.code().name}: {error.details()}") from error
    if response.status != SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        raise ProbeError(f"health status {status}")


def check_tcp(address: str, *, timeout: float = 2.0) -> None:
    """Raise ProbeError unless something accepts a TCP connection at address."""
    try:
        with socket.create_connection(split_address(address), timeout=timeout):
            pass
    except OSError as error:
        raise ProbeError(f"cannot connect: {error}") from error


def grpc_serving(address: str, *, service: str = "", timeout: float = 2.0) -> bool:
    try:
        check_grpc(address, service=service, timeout=timeout)
    except ProbeError:
        return False
    return True


def tcp_open(address: str, *, timeout: float = 2.0) -> bool:
    try:
        check_tcp(address, timeout=timeout)
    except ProbeError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.kit.healthcheck", description="Probe a tripmesh process: gRPC health or TCP."
    )
    parser.add_argument("address", help="HOST:PORT to probe")
    parser.add_argument("--service", default="", help="gRPC service name to check (default: the whole server)")
    parser.add_argument("--tcp", action="store_true", help="only check that the port accepts a TCP connection")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = parser.parse_args(argv)
    try:
        if args.tcp:
            check_tcp(args.address, timeout=args.timeout)
        else:
            check_grpc(args.address, service=args.service, timeout=args.timeout)
    except (ProbeError, ValueError) as error:
        print(f"{args.address}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
