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
import linecache
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.load import LoadResult, TripPlan, drive
from bench.mesh import REGISTRY, REPO, Mesh, Proc

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
            command = [py_spy(), "record", "--pid", str(pid), "--rate", str(RATE), "--threads", "--format", fmt]
            process = subprocess.Popen(
                [*command, "-o", str(output)],
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


@dataclass(frozen=True)
class Frame:
    func: str
    path: str  # as py-spy prints it: relative to site-packages or the standard library, or absolute
    line: int

    @property
    def short(self) -> str:
        path = self.path
        for marker in ("site-packages/", "lib/python3.11/", f"{REPO}/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        return path

    @property
    def label(self) -> str:
        return f"`{self.func}` ({self.short})" if self.short else f"`{self.func}`"

    def source(self) -> str:
        """The source line this frame is on ('' when the file cannot be found)."""
        candidates = [Path(self.path)] if self.path.startswith("/") else [Path(p) / self.path for p in sys.path if p]
        for candidate in candidates:
            if candidate.is_file():
                return linecache.getline(str(candidate), self.line).strip()
        return ""


def parse_frame(text: str) -> Frame:
    match = FRAME.match(text.strip())
    if not match:
        return Frame(text.strip(), "", 0)
    return Frame(match["func"], match["file"], int(match["line"] or 0))


# Innermost frames where a thread blocks: py-spy cannot always tell these from work, so they are
# counted apart ("waiting") and the shares of work are over the rest.
WAITING_SOURCE = ("self._selector.select(", ".get()", "work_queue.get(", "self._target(")


def waiting(leaf: Frame) -> bool:
    if leaf.short.endswith("selectors.py") and leaf.func.endswith(".select"):
        return True
    return any(marker in leaf.source() for marker in WAITING_SOURCE)


def category(path: str) -> str:
    for name, markers in CATEGORIES:
        if any(m in path for m in markers):
            return name
    return "other"


def thread_role(thread: str, frames: list[Frame]) -> str:
    funcs = {f.func.rsplit(".", 1)[-1] for f in frames}
    if "_connection_worker_thread" in funcs:
        return "aiosqlite's worker thread (SQLite calls, commit and fsync)"
    if "_in_transaction" in funcs or thread.startswith("db"):
        return "the step log's database thread (the group commit: SQLite calls, commit and fsync)"
    if "run_forever" in funcs:
        return "the event loop (main thread)"
    if "_poll_wrapper" in thread:
        return "gRPC's poller thread (C core)"
    return "other threads"


@dataclass
class Profile:
    total: int = 0
    waiting: int = 0
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)
    threads: Counter[str] = field(default_factory=Counter)
    waits: Counter[str] = field(default_factory=Counter)

    @property
    def working(self) -> int:
        return self.total - self.waiting


def analyse(raw: Path) -> Profile:
    out = Profile()
    wait_cache: dict[Frame, bool] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = [p for p in stack.split(";") if p]
        thread = next((p for p in parts if p.startswith("thread ")), "")
        frames = [parse_frame(p) for p in parts if not p.startswith(("process ", "thread "))]
        if not frames:
            continue
        out.total += count
        leaf = frames[-1]
        if leaf not in wait_cache:
            wait_cache[leaf] = waiting(leaf)
        if wait_cache[leaf]:
            out.waiting += count
            out.waits[f"{leaf.label} `{leaf.source()}`"] += count
            continue
        out.threads[thread_role(thread, frames)] += count
        out.self_time[leaf.label] += count
        out.categories[category(leaf.short)] += count
        for label in {f.label for f in frames}:
            out.inclusive[label] += count
    return out


def write_report(raw: Path, out: Path, result: LoadResult, cpu_per_trip: float) -> str:
    profile = analyse(raw)

    def pct(n: int) -> str:
        return f"{100 * n / profile.working:.1f} %" if profile.working else "-"

    own = [(k, v) for k, v in profile.inclusive.most_common() if "coordinator/" in k or "services/" in k]
    lines = [
        f"# Where the coordinator's CPU goes ({datetime.now(UTC):%Y-%m-%d %H:%M UTC})",
        "",
        f"py-spy at {RATE} Hz on tripmesh's coordinator (as shipped) during a closed loop of {result.trips} trips "
        f"at c=16 ({result.throughput:.1f} trips/s; the coordinator used {cpu_per_trip * 1000:.1f} ms of CPU per "
        f"trip). {profile.total:,} samples of stacks py-spy took for active; {profile.waiting:,} of them "
        f"({100 * profile.waiting / max(1, profile.total):.0f} %) sit where a thread blocks (epoll, a queue's "
        "get, a thread running C code), which py-spy cannot always tell from work, and are left out: the "
        f"shares below are of the other {profile.working:,}. A Python frame's self time includes the C code it "
        "calls (the step log's statements and fsync count in its database thread's `do_execute` / `do_commit`). "
        "Flame graph of a "
        "twin run: `profile-coordinator.svg`. Regenerate with `python -m bench --profile`.",
        "",
        "## By thread",
        "",
        "| thread | share |",
        "|---|---:|",
        *[f"| {name} | {pct(n)} |" for name, n in profile.threads.most_common()],
        "",
        "## By where the innermost frame is",
        "",
        "| code | share |",
        "|---|---:|",
        *[f"| {name} | {pct(n)} |" for name, n in profile.categories.most_common()],
        "",
        "## Top 10 functions by self time (innermost Python frame)",
        "",
        "| function | self |",
        "|---|---:|",
        *[f"| {name} | {pct(n)} |" for name, n in profile.self_time.most_common(10)],
        "",
        "## tripmesh's own functions by inclusive time (on the stack)",
        "",
        "| function | inclusive |",
        "|---|---:|",
        *[f"| {name} | {pct(n)} |" for name, n in own[:15]],
        "",
        "## Left out as waiting",
        "",
        "| innermost frame | samples |",
        "|---|---:|",
        *[f"| {name} | {n:,} |" for name, n in profile.waits.most_common(5)],
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
