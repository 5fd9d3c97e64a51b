"""`python -m bench --profile`: where the coordinator's CPU goes, sampled with py-spy during c=16 runs.

Starts a fresh mesh with tripmesh's coordinator as shipped, warms it up, then drives two closed loops
at concurrency 16 while py-spy samples the coordinator (100 Hz, idle stacks left out): the first writes
the flame graph `results/profile-coordinator.svg`, the second collapsed stacks, from which
`results/profile.md` lists the top functions by self time and by inclusive time, and the share of
samples by where the innermost frame lives (SQLAlchemy, gRPC, asyncio, logging, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.load import LoadResult, TripPlan, drive
from bench.mesh import REGISTRY, Mesh, Proc

RATE = 100
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

CATEGORIES = (
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("sqlite3 / aiosqlite", ("aiosqlite/", "sqlite3/")),
    ("gRPC (grpc, grpc.aio, interceptors)", ("grpc/", "grpc_status/", "grpc_health/", "grpc_reflection/")),
    ("protobuf", ("google/protobuf/",)),
    ("logging (structlog, logging)", ("structlog/", "logging/")),
    ("asyncio event loop", ("asyncio/",)),
    ("json / dataclasses / enum / datetime", ("json/", "dataclasses.py", "enum.py", "datetime.py", "copy.py")),
    ("coordinator/ (tripmesh)", ("coordinator/",)),
    ("services/kit (tripmesh)", ("services/",)),
)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("bench --profile needs py-spy (pip install -e '.[bench]')")
    return found


@dataclass
class Sampler:
    """py-spy recording one PID until stopped (SIGINT makes it write its output)."""

    process: subprocess.Popen[bytes]
    output: Path

    @classmethod
    def start(cls, pid: int, output: Path, fmt: str, log: Path) -> Sampler:
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [py_spy(), "record", "--pid", str(pid), "--rate", str(RATE), "--format", fmt, "-o", str(output)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        return cls(process, output)

    def stop(self, timeout: float = 60.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _run(mesh: Mesh, plan: TripPlan, trips: int, prefix: str) -> LoadResult:
    return asyncio.run(drive(mesh.address("coordinator"), plan, trips=trips, concurrency=16, prefix=prefix))


def _sampled(coordinator: Proc, mesh: Mesh, plan: TripPlan, trips: int, output: Path, fmt: str) -> LoadResult:
    sampler = Sampler.start(coordinator.pid, output, fmt, mesh.log_dir / "py-spy.log")
    try:
        with contextlib.suppress(Exception):
            asyncio.run(asyncio.sleep(1.0))  # let py-spy attach
        result = _run(mesh, plan, trips, f"prof-{fmt}")
        sampler.stop()
    finally:
        sampler.kill()
    if not output.exists():
        raise SystemExit(f"py-spy wrote no {output}; its log:\n{(mesh.log_dir / 'py-spy.log').read_text()}")
    return result


def _frame(text: str) -> tuple[str, str]:
    match = FRAME.match(text.strip())
    if not match:
        return text.strip(), ""
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return match["func"], path


def _label(func: str, path: str) -> str:
    return f"`{func}` ({path})" if path else f"`{func}`"


def category(path: str) -> str:
    for name, markers in CATEGORIES:
        if any(m in path for m in markers):
            return name
    return "other"


def analyse(raw: Path) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        func, path = frames[-1]
        self_time[_label(func, path)] += count
        categories[category(path)] += count
        for label in {_label(f, p) for f, p in frames}:
            inclusive[label] += count
    return total, self_time, inclusive, categories


def write_report(raw: Path, out: Path, result: LoadResult, cpu_per_trip: float) -> str:
    total, self_time, inclusive, categories = analyse(raw)

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f} %" if total else "-"

    lines = [
        f"# Where the coordinator's CPU goes ({datetime.now(UTC):%Y-%m-%d %H:%M UTC})",
        "",
        f"py-spy at {RATE} Hz on tripmesh's coordinator (as shipped) during a closed loop of {result.trips} trips "
        f"at c=16 ({result.throughput:.1f} trips/s; the coordinator used {cpu_per_trip * 1000:.1f} ms of CPU per "
        f"trip); {total:,} samples of non-idle stacks. Flame graph of a twin run: `profile-coordinator.svg`. "
        "Regenerate with `python -m bench --profile`.",
        "",
        "## By where the innermost frame is",
        "",
        "| code | share of samples |",
        "|---|---:|",
        *[f"| {name} | {pct(n)} |" for name, n in categories.most_common()],
        "",
        "## Top 10 functions by self time (innermost frame)",
        "",
        "| function | self |",
        "|---|---:|",
        *[f"| {name} | {pct(n)} |" for name, n in self_time.most_common(10)],
        "",
        "## Top functions by inclusive time (on the stack), tripmesh's own code",
        "",
        "| function | inclusive |",
        "|---|---:|",
        *[
            f"| {name} | {pct(n)} |"
            for name, n in [(k, v) for k, v in inclusive.most_common() if "coordinator/" in k or "services/" in k][:15]
        ],
        "",
        "## Top 15 functions by inclusive time, any code",
        "",
        "| function | inclusive |",
        "|---|---:|",
        *[f"| {name} | {pct(n)} |" for name, n in inclusive.most_common(15)],
        "",
    ]
    text = "\n".join(lines)
    out.write_text(text)
    return text


def run_profile(work: Path, out_dir: Path, *, quick: bool = False) -> None:
    trips = 64 if quick else 400
    mesh = Mesh(work / "profile")
    try:
        mesh.start_participants()
        coordinator = mesh.start_coordinator("tripmesh")
        plan = TripPlan("p")
        _run(mesh, plan, 32, "prof-warm")
        _sampled(coordinator, mesh, plan, trips, out_dir / "profile-coordinator.svg", "flamegraph")
        raw = work / "profile-coordinator.txt"
        cpu0 = coordinator.cpu_seconds()
        result = _sampled(coordinator, mesh, plan, trips, raw, "raw")
        cpu_per_trip = (coordinator.cpu_seconds() - cpu0) / max(1, result.trips)
        text = write_report(raw, out_dir / "profile.md", result, cpu_per_trip)
        print(text)
        print(f"bench: wrote {out_dir / 'profile.md'} and {out_dir / 'profile-coordinator.svg'}")
    finally:
        mesh.stop()
        REGISTRY.kill_all()
