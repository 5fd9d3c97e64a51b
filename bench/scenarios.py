"""What the benchmark runs: throughput rounds of the three coordinators, then scale and recovery.

Throughput: for each round, each coordinator in turn (rotated each round, so A B C, B C A, C A B ...)
gets a fresh var dir (fresh participant databases, so inventory and capacity effects are equal), the
sink and the four participants, then itself; after a short warm-up, a closed loop at each concurrency
point. Per point: trips/s, latency percentiles, CPU seconds per trip of every process (psutil
user+system delta / trips), peak RSS of every process (VmHWM, reset before the point), and the step
log's growth per trip (the coordinator's database and WAL/journal, checkpointed before and after).

Scale and recovery (tripmesh as shipped only): flight and hotel get a fault rule that delays, by an
hour, every Reserve of a trip whose id contains "hold-"; the coordinator gets a call deadline longer
than that, so trips started with such ids park mid-saga (both reserve intents durable, no outcome).
Coordinator RSS is sampled at 100 ... 10,000 trips in flight, and its CPU per trip is measured on a
closed loop of ordinary trips beside 100 and beside 10,000 parked ones. Then the coordinator is
SIGKILLed, flight and hotel restart without the rule, the coordinator restarts on the same step log
with its default settings, and the clock runs until every trip in the step log is terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm

from bench.load import LoadResult, TripPlan, drive, submit
from bench.mesh import (
    CoordinatorKind,
    Mesh,
    Proc,
    checkpoint,
    count_by_state,
    count_not_resumed,
    count_unfinished,
    db_bytes,
    failure_reasons,
    fences,
)
from bench.observe import Observer

HOLD_MARKER = "hold-"
HOLD_RULE = json.dumps([{"method": "Reserve", "match": HOLD_MARKER, "latency_ms": 3_600_000}])
# Each parked trip keeps a Reserve open at flight and at hotel for the hour: lift their cap on calls at once
# (4096 by default, the backpressure of kit.server) so that 10,000 can be parked, not refused.
HOLD_PARTICIPANT_ENV = {"TRIPMESH_FLIGHT_MAX_CONCURRENT_RPCS": "100000", "TRIPMESH_HOTEL_MAX_CONCURRENT_RPCS": "100000"}
HOLD_COORDINATOR_ENV = {
    "TRIPMESH_COORDINATOR_CALL_TIMEOUT_SECONDS": "7200",
    "TRIPMESH_COORDINATOR_TRIP_TIMEOUT_SECONDS": "7200",
    # 10,000 trips parked on purpose, each really in flight (written, its reserve calls sent): drive them
    # all at once; with the default limit (256) the rest would wait for a slot, unwritten.
    "TRIPMESH_COORDINATOR_MAX_ACTIVE_TRIPS": "1000000",
    "TRIPMESH_COORDINATOR_MAX_PENDING_TRIPS": "1000000",
}


@dataclass(frozen=True)
class Config:
    concurrencies: tuple[int, ...]
    trips: dict[int, int]  # trips per point, by concurrency
    warmup: int
    rounds: int
    kinds: tuple[CoordinatorKind, ...]
    inflight_levels: tuple[int, ...]  # coordinator RSS sampled at each; CPU measured at the first and last
    scale_trips: int  # closed-loop trips at c=16 for the CPU-per-trip measurement beside parked trips
    recovery_limit: float  # seconds to wait for every trip to be terminal after the restart
    point_time_limit: float  # a point stops sending after this many seconds (then waits for its answers)

    @property
    def throughput_trips(self) -> int:
        return self.rounds * len(self.kinds) * (self.warmup + sum(self.trips[c] for c in self.concurrencies))

    @property
    def scale_total(self) -> int:
        return self.warmup + self.inflight_levels[-1] * 2 + 2 * self.scale_trips


FULL = Config(
    concurrencies=(1, 16, 64),
    # Each point runs for seconds, not a second or two: with 256 trips, c=64 was over in 2.5 s and its
    # ratios moved by +-0.05 from one run to the next on this shared machine.
    trips={1: 150, 16: 600, 64: 1200},
    warmup=16,
    rounds=3,
    kinds=("tripmesh", "nolog", "dbos"),
    inflight_levels=(100, 1000, 2500, 5000, 10_000),
    scale_trips=96,
    recovery_limit=300.0,
    point_time_limit=20.0,
)

QUICK = Config(
    concurrencies=(1, 16, 64),
    trips={1: 8, 16: 48, 64: 96},
    warmup=8,
    rounds=1,
    kinds=("tripmesh", "nolog", "dbos"),
    inflight_levels=(30, 100, 300),
    scale_trips=32,
    recovery_limit=120.0,
    point_time_limit=6.0,
)


@dataclass
class Point:
    kind: CoordinatorKind
    round: int
    concurrency: int
    trips: int
    confirmed: int
    seconds: float
    throughput: float
    p50: float
    p90: float
    p99: float
    errors: dict[str, int]
    states: dict[str, int]
    cpu_per_trip: dict[str, float]  # seconds, by process ("client" is the load generator itself)
    peak_rss: dict[str, int]  # bytes, by process
    steplog_bytes_per_trip: float
    coordinator_write_bytes_per_trip: float
    other_cpu_cores: float  # CPU used meanwhile by programs that are not part of the benchmark, in cores
    kernel_cpu_cores: float  # ... and by kernel threads (I/O, the ext4 journal), in cores
    steal_cores: float  # CPU the hypervisor gave to other guests while this one wanted it, in cores


@dataclass
class ScaleLevel:
    inflight: int
    rss: int
    measured: LoadResult | None = None
    coordinator_cpu_per_trip: float | None = None


@dataclass
class ScaleRecovery:
    levels: list[ScaleLevel] = field(default_factory=list)
    baseline_rss: int = 0
    parked: int = 0
    parked_states: dict[str, int] = field(default_factory=dict)
    serving_after: float | None = None
    resumed_after: float | None = None  # the restarted coordinator logged that it drives every trip again
    # every parked trip's next call sent (its intent written under its new lease token), or the trip terminal
    driven_after: float | None = None
    terminal_after: float | None = None  # every trip terminal
    left_unfinished: int = 0
    final_states: dict[str, int] = field(default_factory=dict)
    failure_reasons: list[tuple[str, int]] = field(default_factory=list)
    recovery_cpu: float = 0.0
    recovery_peak_rss: int = 0
    fill_seconds: float = 0.0
    submit_errors: dict[str, int] = field(default_factory=dict)  # answers to BookTrip while parking trips
    notes: list[str] = field(default_factory=list)


class Progress:
    """One tqdm bar for the whole run, in trips."""

    def __init__(self, total: int, *, disable: bool = False) -> None:
        self.bar = tqdm(total=total, unit="trip", dynamic_ncols=True, disable=disable, smoothing=0.05)

    def phase(self, text: str) -> None:
        self.bar.set_description_str(text)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _busy_cpu() -> float:
    """CPU seconds the whole machine has been busy (all cores, not idle or waiting for I/O)."""
    t = psutil.cpu_times()
    return float(t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def _steal_cpu() -> float:
    """CPU seconds the hypervisor gave to someone else while this VM wanted to run (0 on bare metal)."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def _kernel_cpu() -> float:
    """CPU seconds of the kernel's own threads (kworker, jbd2, ...: children of kthreadd, PID 2)."""
    total = 0.0
    for proc in psutil.process_iter(["pid", "ppid", "cpu_times"]):
        info = proc.info
        if (info["pid"] == 2 or info["ppid"] == 2) and info["cpu_times"] is not None:
            total += info["cpu_times"].user + info["cpu_times"].system
    return total


def _cpu(procs: dict[str, Proc], me: psutil.Process) -> dict[str, float]:
    out = {name: proc.cpu_seconds() for name, proc in procs.items()}
    times = me.cpu_times()
    out["client"] = float(times.user + times.system)
    return out


def measure_point(
    mesh: Mesh,
    kind: CoordinatorKind,
    round_no: int,
    plan: TripPlan,
    concurrency: int,
    trips: int,
    progress: Progress,
    time_limit: float,
) -> Point:
    db = mesh.coordinator_db(kind)
    checkpoint(db)
    size0 = db_bytes(db)
    procs = mesh.processes()
    me = psutil.Process()
    for proc in procs.values():
        proc.reset_peak()
    write0 = mesh.coordinator.write_bytes()
    cpu0 = _cpu(procs, me)
    busy0, kernel0, steal0 = _busy_cpu(), _kernel_cpu(), _steal_cpu()
    result = asyncio.run(
        drive(
            mesh.address("coordinator"),
            plan,
            trips=trips,
            concurrency=concurrency,
            prefix=f"{kind[0]}{round_no}c{concurrency}",
            on_done=progress.update,
            time_limit=time_limit,
        )
    )
    cpu1 = _cpu(procs, me)
    busy1, kernel1, steal1 = _busy_cpu(), _kernel_cpu(), _steal_cpu()
    progress.update(trips - result.trips)  # trips a time-limited point never sent
    peaks = {name: proc.peak_rss() for name, proc in procs.items()}
    write1 = mesh.coordinator.write_bytes()
    mesh.check_alive()
    checkpoint(db)
    size1 = db_bytes(db)
    n = max(1, result.trips)
    return Point(
        kind=kind,
        round=round_no,
        concurrency=concurrency,
        trips=result.trips,
        confirmed=result.confirmed,
        seconds=result.seconds,
        throughput=result.throughput,
        p50=result.percentile(50),
        p90=result.percentile(90),
        p99=result.percentile(99),
        errors=dict(result.errors),
        states=dict(result.states),
        cpu_per_trip={name: (cpu1[name] - cpu0[name]) / n for name in cpu0},
        peak_rss=peaks,
        steplog_bytes_per_trip=(size1 - size0) / max(1, result.confirmed),
        coordinator_write_bytes_per_trip=(write1 - write0) / n,
        other_cpu_cores=max(0.0, (busy1 - busy0) - (kernel1 - kernel0) - sum(cpu1[k] - cpu0[k] for k in cpu0))
        / max(result.seconds, 1e-9),
        kernel_cpu_cores=(kernel1 - kernel0) / max(result.seconds, 1e-9),
        steal_cores=(steal1 - steal0) / max(result.seconds, 1e-9),
    )


def round_order(kinds: tuple[CoordinatorKind, ...], round_no: int) -> list[CoordinatorKind]:
    shift = round_no % len(kinds)
    return [*kinds[shift:], *kinds[:shift]]


def run_throughput(config: Config, work: Path, progress: Progress, log: Callable[[str], None]) -> list[Point]:
    points: list[Point] = []
    for round_no in range(config.rounds):
        for kind in round_order(config.kinds, round_no):
            var_dir = work / f"round{round_no + 1}-{kind}"
            observer = Observer() if kind == "observed" else None
            if observer is not None:
                observer.__enter__()
            mesh = Mesh(var_dir, otlp_endpoint=observer.endpoint if observer else None)
            try:
                progress.phase(f"round {round_no + 1}/{config.rounds} {kind}: starting")
                mesh.start_participants()
                mesh.start_coordinator(kind)
                if observer is not None:  # scraped from now on, every process being up
                    observer.targets = mesh.metrics_addresses()
                plan = TripPlan(f"r{round_no + 1}")
                progress.phase(f"round {round_no + 1}/{config.rounds} {kind}: warm-up")
                asyncio.run(
                    drive(
                        mesh.address("coordinator"),
                        plan,
                        trips=config.warmup,
                        concurrency=min(16, config.warmup),
                        prefix=f"{kind[0]}{round_no}w",
                        on_done=progress.update,
                        time_limit=config.point_time_limit,
                    )
                )
                for concurrency in config.concurrencies:
                    progress.phase(f"round {round_no + 1}/{config.rounds} {kind} c={concurrency}")
                    point = measure_point(
                        mesh,
                        kind,
                        round_no + 1,
                        plan,
                        concurrency,
                        config.trips[concurrency],
                        progress,
                        config.point_time_limit,
                    )
                    points.append(point)
                    if point.errors or point.confirmed != point.trips:
                        log(
                            f"round {round_no + 1} {kind} c={concurrency}: {point.confirmed}/{point.trips} confirmed, "
                            f"states {point.states}, errors {point.errors}"
                        )
            finally:
                mesh.stop()
                if observer is not None:
                    observer.__exit__()
                    log(
                        f"round {round_no + 1} observed: {observer.counter.spans} spans received, "
                        f"{observer.scrapes} scrapes ({observer.scrape_errors} failed)"
                    )
            shutil.rmtree(var_dir, ignore_errors=True)
    return points


def wait_inflight(db: Path, target: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = count_unfinished(db)
    while count < target and time.monotonic() < deadline:
        time.sleep(0.2)
        count = count_unfinished(db)
    return count


def _coordinator_started_logged(log_path: Path, offset: int) -> bool:
    try:
        with log_path.open("rb") as f:
            f.seek(offset)
            return b"coordinator_started" in f.read()
    except OSError:
        return False


def run_scale_recovery(config: Config, work: Path, progress: Progress, log: Callable[[str], None]) -> ScaleRecovery:
    out = ScaleRecovery()
    var_dir = work / "scale-recovery"
    mesh = Mesh(var_dir, participant_faults={"flight": HOLD_RULE, "hotel": HOLD_RULE}, extra_env=HOLD_PARTICIPANT_ENV)
    db = mesh.coordinator_db("tripmesh")
    try:
        progress.phase("scale: starting")
        mesh.start_participants()
        coordinator = mesh.start_coordinator("tripmesh", extra_env=HOLD_COORDINATOR_ENV)
        plan = TripPlan("s")
        address = mesh.address("coordinator")
        progress.phase("scale: warm-up")
        asyncio.run(drive(address, plan, trips=config.warmup, concurrency=16, prefix="warm", on_done=progress.update))
        time.sleep(1.0)
        out.baseline_rss = coordinator.rss()
        held = 0
        for level in config.inflight_levels:
            progress.phase(f"scale: parking trips ({level:,} in flight)")
            t0 = time.monotonic()
            submitted = asyncio.run(
                submit(
                    address,
                    plan,
                    trips=level - held,
                    prefix=f"{HOLD_MARKER}{level}",
                    on_done=progress.update,
                    time_limit=600.0,
                )
            )
            for code, n in submitted.errors.items():
                out.submit_errors[code] = out.submit_errors.get(code, 0) + n
            held = wait_inflight(db, level, timeout=60.0)
            out.fill_seconds += time.monotonic() - t0
            if held < level:
                out.notes.append(f"only {held} of {level} trips were in flight after submitting them")
            mesh.check_alive()
            time.sleep(1.0)
            sample = ScaleLevel(inflight=held, rss=coordinator.rss())
            if level in (config.inflight_levels[0], config.inflight_levels[-1]):
                progress.phase(f"scale: closed loop c=16 beside {held:,} parked trips")
                cpu0 = coordinator.cpu_seconds()
                sample.measured = asyncio.run(
                    drive(
                        address,
                        plan,
                        trips=config.scale_trips,
                        concurrency=16,
                        prefix=f"beside{level}",
                        on_done=progress.update,
                        time_limit=120.0,
                    )
                )
                sample.coordinator_cpu_per_trip = (coordinator.cpu_seconds() - cpu0) / max(1, sample.measured.trips)
            out.levels.append(sample)

        # Recovery: SIGKILL with everything parked, participants back to normal, restart on the same log.
        progress.phase(f"recovery: SIGKILL with {held:,} in flight")
        mesh.stop_coordinator(kill=True)
        out.parked = count_unfinished(db)
        out.parked_states = count_by_state(db)
        parked_fences = fences(db)
        for name in ("flight", "hotel"):
            mesh.restart_participant(name)
        log_path = mesh.log_dir / "coordinator.log"
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        progress.phase(f"recovery: {out.parked:,} trips to finish")
        started = time.monotonic()
        restarted = mesh.start_coordinator("tripmesh", timeout=120.0)
        out.serving_after = time.monotonic() - started
        left = out.parked
        deadline = started + config.recovery_limit
        while time.monotonic() < deadline:
            if out.resumed_after is None and _coordinator_started_logged(log_path, log_offset):
                out.resumed_after = time.monotonic() - started
            if out.driven_after is None and count_not_resumed(db, parked_fences) == 0:
                out.driven_after = time.monotonic() - started
            now_left = count_unfinished(db)
            progress.update(max(0, left - now_left))
            left = now_left
            if left == 0:
                out.terminal_after = time.monotonic() - started
                break
            if not restarted.alive():
                out.notes.append(f"the restarted coordinator exited with {restarted.popen.returncode}")
                break
            time.sleep(0.1)
        if out.resumed_after is None and _coordinator_started_logged(log_path, log_offset):
            out.resumed_after = time.monotonic() - started
        out.left_unfinished = left
        with contextlib.suppress(Exception):
            out.recovery_cpu = restarted.cpu_seconds()
            out.recovery_peak_rss = restarted.peak_rss()
        out.final_states = count_by_state(db)
        out.failure_reasons = failure_reasons(db)
        if out.terminal_after is None:
            log(f"recovery: {left:,} trips still in flight after {config.recovery_limit:.0f} s")
    finally:
        mesh.stop()
    shutil.rmtree(var_dir, ignore_errors=True)
    return out


def as_json(points: list[Point], scale: ScaleRecovery | None) -> dict[str, Any]:
    def level(x: ScaleLevel) -> dict[str, Any]:
        m = x.measured
        return {
            "inflight": x.inflight,
            "rss": x.rss,
            "coordinator_cpu_per_trip": x.coordinator_cpu_per_trip,
            "throughput": m.throughput if m else None,
            "p50": m.percentile(50) if m else None,
            "p99": m.percentile(99) if m else None,
        }

    return {
        "points": [p.__dict__ for p in points],
        "scale": None
        if scale is None
        else {**{k: v for k, v in scale.__dict__.items() if k != "levels"}, "levels": [level(x) for x in scale.levels]},
    }
