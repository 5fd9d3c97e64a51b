"""`python -m bench --replicas`: throughput with one and with three coordinator replicas on PostgreSQL.

For each replica count, a fresh mesh: the four participants (SQLite each, as in the other scenarios)
and N coordinator processes sharing one scratch PostgreSQL step log (created with a unique name and
dropped after). The closed-loop clients of bench/load.py are spread evenly over the replicas, as a
load balancer would spread BookTrip; the figure is every answered trip over the wall time of the
slowest replica's clients. Every trip is checked CONFIRMED.

What it shows on a small machine: whether the lease bookkeeping costs anything and whether more
coordinators help when the coordinator, not the participants or the database, is the bottleneck.
On 2 shared cores the participants and PostgreSQL compete with the replicas for the same CPUs, so
more replicas cannot add CPU; read the figures with the machine's load beside them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.load import LoadResult, TripPlan, drive
from bench.mesh import REGISTRY, Mesh, Proc, free_ports, spawn, wait_until
from services.kit.healthcheck import grpc_serving

SERVER = os.environ.get("TRIPMESH_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@dataclass(frozen=True)
class ReplicaPoint:
    replicas: int
    concurrency: int
    trips: int
    confirmed: int
    seconds: float
    throughput: float
    p50: float
    p99: float
    errors: dict[str, int]


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{SERVER}/postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _start_replicas(mesh: Mesh, url: str, count: int) -> list[tuple[str, Proc]]:
    """`count` coordinators on one step log; the first alone (it creates the schema), then the rest."""
    started: list[tuple[str, Proc]] = []
    for index, port in enumerate(free_ports(count), 1):
        env = mesh.env()
        env.update(
            {
                "TRIPMESH_COORDINATOR_PORT": str(port),
                "TRIPMESH_COORDINATOR_DATABASE_URL": url,
                "TRIPMESH_COORDINATOR_REPLICA_ID": f"bench-{index}",
                "TRIPMESH_LOG_LEVEL": "warning",
            }
        )
        proc = spawn(f"coordinator-{index}", "coordinator", env, mesh.log_dir)
        address = f"127.0.0.1:{port}"
        wait_until(lambda a=address: grpc_serving(a, timeout=1.0), [proc], timeout=60, what=f"replica {index}")  # type: ignore[misc]
        started.append((address, proc))
    return started


async def _spread(addresses: list[str], plan: TripPlan, trips: int, concurrency: int, tag: str) -> list[LoadResult]:
    share, extra = divmod(concurrency, len(addresses))
    per_trips = trips // len(addresses)
    return list(
        await asyncio.gather(
            *(
                drive(address, plan, trips=per_trips, concurrency=share + (i < extra), prefix=f"{tag}-{i}")
                for i, address in enumerate(addresses)
            )
        )
    )


def measure(work: Path, replicas: int, *, trips: int, concurrency: int, warmup: int) -> ReplicaPoint:
    name = f"tm_bench_replicas_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = f"{SERVER.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    mesh = Mesh(work / f"replicas-{replicas}")
    started: list[tuple[str, Proc]] = []
    try:
        mesh.start_participants()
        started = _start_replicas(mesh, url, replicas)
        addresses = [address for address, _ in started]
        plan = TripPlan(f"x{replicas}")
        asyncio.run(_spread(addresses, plan, warmup, min(concurrency, warmup), "warm"))
        t0 = time.perf_counter()
        results = asyncio.run(_spread(addresses, plan, trips, concurrency, "run"))
        seconds = time.perf_counter() - t0
    finally:
        for _address, proc in started:
            proc.stop()
            REGISTRY.forget(proc)
        mesh.stop()
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    latencies = sorted(x for r in results for x in r.latencies)
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r.errors.items():
            errors[code] = errors.get(code, 0) + n
    done = len(latencies)
    return ReplicaPoint(
        replicas=replicas,
        concurrency=concurrency,
        trips=done,
        confirmed=sum(r.confirmed for r in results),
        seconds=seconds,
        throughput=done / seconds if seconds > 0 else 0.0,
        p50=latencies[len(latencies) // 2] if latencies else float("nan"),
        p99=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan"),
        errors=errors,
    )


def run_replicas(work: Path, out: Path, *, quick: bool) -> list[ReplicaPoint]:
    trips, concurrency, warmup = (150, 24, 24) if quick else (1200, 48, 96)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    points = [measure(work, n, trips=trips, concurrency=concurrency, warmup=warmup) for n in (1, 3)]
    lines = [
        f"# Coordinator replicas on PostgreSQL ({'quick' if quick else 'full'} run)",
        "",
        f"{os.cpu_count()} cores; load average before: {load}, after: " + "/".join(f"{x:.1f}" for x in os.getloadavg()),
        "",
        "| replicas | clients | trips | confirmed | seconds | trips/s | p50 ms | p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *(
            f"| {p.replicas} | {p.concurrency} | {p.trips} | {p.confirmed} | {p.seconds:.1f} | "
            f"{p.throughput:.1f} | {p.p50 * 1000:.0f} | {p.p99 * 1000:.0f} | {p.errors or '-'} |"
            for p in points
        ),
    ]
    text = "\n".join(lines) + "\n"
    (out / "replicas-latest.md").write_text(text)
    print(text)
    return points
