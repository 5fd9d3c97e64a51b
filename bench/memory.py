"""`python -m bench.memory`: the coordinator's memory per parked trip, by RSS slope and by tracemalloc.

    python -m bench.memory --trips 1000,5000            # RSS at each level, least-squares slope
    python -m bench.memory --trips 1000,3000 --tracemalloc  # also where it goes, by allocation site

Trips are parked as in the scale scenario (bench/scenarios.py): flight and hotel delay every Reserve of
a "hold-" trip by an hour, so each parked trip waits with both reserve calls outstanding. With
--tracemalloc the coordinator traces its allocations (coordinator/memtrace.py) and dumps a snapshot on
SIGUSR1 at the baseline and at every level; the difference between the last and the baseline, divided
by the trips parked meanwhile, is the Python memory per trip by site (file:line). tracemalloc inflates
RSS, so take the RSS slope from a run without it. Every process is stopped by PID on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.load import TripPlan, drive, submit
from bench.mesh import REGISTRY, Mesh, Proc
from bench.scenarios import HOLD_COORDINATOR_ENV, HOLD_MARKER, HOLD_RULE, wait_inflight


def least_squares(points: list[tuple[int, int]]) -> tuple[float, float]:
    """(intercept, slope) of y = a + b x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def _snapshot(proc: Proc, path: Path, timeout: float = 120.0) -> tracemalloc.Snapshot:
    path.unlink(missing_ok=True)
    proc.signal(signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no tracemalloc snapshot from the coordinator after {timeout:.0f} s")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(path))


def top_sites(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, trips: int, limit: int) -> list[str]:
    """The allocation sites (file:line) that grew most, in bytes per trip."""
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    lines = [f"  total: {total / trips / 1024:.2f} KB/trip over {trips:,} trips"]
    for stat in stats[:limit]:
        frame = stat.traceback[0]
        where = f"{_short(frame.filename)}:{frame.lineno}"
        lines.append(f"  {stat.size_diff / trips:8.0f} B/trip {stat.count_diff / trips:6.2f} blocks/trip  {where}")
    return lines


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3", "perf-coordinator/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def run(levels: list[int], trace: bool, top: int, work: Path) -> list[str]:
    mesh = Mesh(work / "memory", participant_faults={"flight": HOLD_RULE, "hotel": HOLD_RULE})
    snap_path = work / "coordinator.tracemalloc"
    env = dict(HOLD_COORDINATOR_ENV)
    if trace:
        env["TRIPMESH_COORDINATOR_TRACEMALLOC"] = str(snap_path)
    out: list[str] = []
    try:
        mesh.start_participants()
        coordinator = mesh.start_coordinator("tripmesh", extra_env=env)
        address = mesh.address("coordinator")
        plan = TripPlan("m")
        asyncio.run(drive(address, plan, trips=16, concurrency=16, prefix="warm"))
        time.sleep(1.0)
        db = mesh.coordinator_db("tripmesh")
        samples = [(0, coordinator.rss())]
        base = _snapshot(coordinator, snap_path) if trace else None
        held = 0
        for level in levels:
            t0 = time.monotonic()
            asyncio.run(submit(address, plan, trips=level - held, prefix=f"{HOLD_MARKER}{level}", time_limit=600.0))
            held = wait_inflight(db, level, timeout=120.0)
            mesh.check_alive()
            time.sleep(1.0)
            samples.append((held, coordinator.rss()))
            out.append(f"{held:,} parked (in {time.monotonic() - t0:.0f} s): RSS {samples[-1][1] / 2**20:.1f} MB")
            if base is not None:
                out += top_sites(base, _snapshot(coordinator, snap_path), held, top)
        intercept, slope = least_squares(samples)
        out.append(
            f"RSS = {intercept / 2**20:.1f} MB + {slope / 1024:.1f} KB x parked trips "
            f"(least squares over {', '.join(f'{n:,}' for n, _ in samples)}){' [tracemalloc on]' if trace else ''}"
        )
    finally:
        mesh.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trips", default="1000,5000", help="parked-trip levels, e.g. 1000,5000")
    parser.add_argument("--tracemalloc", action="store_true", help="also the top allocation sites per trip")
    parser.add_argument("--top", type=int, default=25, help="how many allocation sites to list")
    args = parser.parse_args(argv)
    levels = sorted(int(x) for x in args.trips.split(","))
    work = Path(tempfile.mkdtemp(prefix="tripmesh-memory-"))
    try:
        for line in run(levels, args.tracemalloc, args.top, work):
            print(line, flush=True)
    except KeyboardInterrupt:
        return 130
    finally:
        REGISTRY.kill_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
