"""The mesh under test: the SMTP sink, the four participants and one coordinator, as child processes.

Every process is `python -m <module>` in its own process group (a Ctrl-C at the terminal reaches only
the benchmark, which then stops its children itself), on free loopback ports, with its SQLite file in
the run's var dir and its output in `<var dir>/logs/<name>.log`. Every child is remembered in
`REGISTRY` and stopped by its PID: SIGTERM, then SIGKILL after a grace period; `REGISTRY.kill_all()`
is the last resort on any way out of the benchmark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import psutil

from coordinator.launcher import free_ports as launcher_free_ports
from services.kit.healthcheck import grpc_serving, tcp_open

REPO = Path(__file__).resolve().parents[1]
PARTICIPANTS = ("flight", "hotel", "payment", "notify")
CoordinatorKind = Literal["tripmesh", "nolog", "dbos", "observed"]
COORDINATOR_MODULES: dict[CoordinatorKind, str] = {
    "tripmesh": "coordinator",
    "nolog": "coordinator",
    "dbos": "bench.dbos_coordinator",
    "observed": "coordinator",
}
COORDINATOR_LABELS: dict[CoordinatorKind, str] = {
    "tripmesh": "(a) tripmesh",
    "nolog": "(b) no step log",
    "dbos": "(c) DBOS workflow",
    "observed": "(d) tripmesh + metrics + tracing",
}


class MeshError(Exception):
    """A process of the mesh could not be started or died."""


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports the kernel says are free now (never the documented defaults)."""
    return launcher_free_ports(count, avoid={2525, 50050, 50051, 50052, 50053, 50054})


@dataclass
class Proc:
    """One child process, measured with psutil and stopped by its PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def peak_rss(self) -> int:
        """VmHWM: the largest resident set since the start or the last `reset_peak`."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return self.rss()

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux: write 5 to /proc/PID/clear_refs)."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def write_bytes(self) -> int:
        """Bytes this process caused to be written to storage (/proc/PID/io), 0 if unreadable."""
        try:
            return int(self.ps.io_counters().write_bytes)
        except (psutil.Error, AttributeError, NotImplementedError):
            return 0

    def signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signum)

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, up to `grace` seconds, then SIGKILL. Returns the exit code."""
        if self.alive():
            self.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.popen.wait())

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
        self.popen.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Registry:
    """Every child the benchmark started, so that none outlives it."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def add(self, proc: Proc) -> None:
        self.procs.append(proc)

    def kill_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.signal(signal.SIGCONT)
                proc.kill()
        self.procs.clear()

    def forget(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)


REGISTRY = Registry()


# `python -m bench --tls`: the certificate directory every process of every mesh uses (kit.tls).
TLS_DIR: Path | None = None


def base_env() -> dict[str, str]:
    """The caller's environment without any TRIPMESH_* of a developer's own mesh (but the bench's TLS)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPMESH_")}
    if TLS_DIR is not None:
        env["TRIPMESH_TLS_DIR"] = str(TLS_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def spawn(name: str, module: str, env: Mapping[str, str], log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(
            [sys.executable, "-m", module],
            env=dict(env),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    proc = Proc(name, popen, log_path)
    REGISTRY.add(proc)
    return proc


def wait_until(probe: object, procs: list[Proc], *, timeout: float, what: str) -> None:
    """Poll `probe()` until true; raise MeshError if one of `procs` exits first or time runs out."""
    assert callable(probe)
    deadline = time.monotonic() + timeout
    while not probe():
        for proc in procs:
            if not proc.alive():
                raise MeshError(f"{proc.name} (pid {proc.pid}) exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            raise MeshError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.05)


class Mesh:
    """One var dir, one set of ports; participants started once, coordinators started and stopped."""

    def __init__(
        self,
        var_dir: Path,
        *,
        participant_faults: Mapping[str, str] | None = None,
        otlp_endpoint: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        """`otlp_endpoint`: every process serves /metrics on a free port and sends its spans there;
        None: metrics and tracing off in every process (the baseline). `extra_env`: TRIPMESH_* settings
        every process gets, at every start."""
        self.var_dir = var_dir
        self.log_dir = var_dir / "logs"
        names = ["smtp-sink", *PARTICIPANTS, "coordinator"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.otlp_endpoint = otlp_endpoint
        observed = (*PARTICIPANTS, "coordinator") if otlp_endpoint else ()
        self.metrics_ports = dict(zip(observed, free_ports(len(observed)), strict=True))
        self.participant_faults = dict(participant_faults or {})
        self.extra_env = dict(extra_env or {})
        self.procs: dict[str, Proc] = {}

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def db_path(self, name: str) -> Path:
        return self.var_dir / f"{name}.db"

    def env(self) -> dict[str, str]:
        env = base_env()
        env["TRIPMESH_VAR_DIR"] = str(self.var_dir)
        env["TRIPMESH_SMTP_SINK_PORT"] = str(self.ports["smtp-sink"])
        env["TRIPMESH_SMTP_SINK_DIR"] = str(self.var_dir / "mail")
        env["TRIPMESH_NOTIFY_SMTP_HOST"] = "127.0.0.1"
        env["TRIPMESH_NOTIFY_SMTP_PORT"] = str(self.ports["smtp-sink"])
        for name in (*PARTICIPANTS, "coordinator"):
            prefix = name.upper()
            env[f"TRIPMESH_{prefix}_HOST"] = "127.0.0.1"
            env[f"TRIPMESH_{prefix}_PORT"] = str(self.ports[name])
            env[f"TRIPMESH_{prefix}_DATABASE_URL"] = f"sqlite+aiosqlite:///{self.db_path(name)}"
        for name in PARTICIPANTS:
            env[f"TRIPMESH_COORDINATOR_{name.upper()}_ADDRESS"] = self.address(name)
        for name in (*PARTICIPANTS, "coordinator"):
            env[f"TRIPMESH_{name.upper()}_METRICS_PORT"] = str(self.metrics_ports.get(name, 0))
        for variable in [v for v in env if v.startswith("OTEL_")]:
            del env[variable]
        if self.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_endpoint
        env.update(self.extra_env)
        return env

    def metrics_addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.metrics_ports.values()]

    def start_participants(self, timeout: float = 60.0) -> None:
        """The SMTP sink, then the four participants together, each healthy before this returns."""
        env = self.env()
        sink = spawn("smtp-sink", "services.notify.smtp_sink", env, self.log_dir)
        self.procs["smtp-sink"] = sink
        wait_until(lambda: tcp_open(self.address("smtp-sink"), timeout=1.0), [sink], timeout=timeout, what="smtp-sink")
        started = []
        for name in PARTICIPANTS:
            penv = dict(env)
            if name in self.participant_faults:
                penv[f"TRIPMESH_{name.upper()}_FAULTS"] = self.participant_faults[name]
            self.procs[name] = spawn(name, f"services.{name}", penv, self.log_dir)
            started.append(self.procs[name])
        for name in PARTICIPANTS:
            address = self.address(name)
            wait_until(lambda a=address: grpc_serving(a, timeout=1.0), started, timeout=timeout, what=name)  # type: ignore[misc]

    def restart_participant(self, name: str, *, faults: str | None = None, timeout: float = 60.0) -> None:
        old = self.procs.pop(name)
        old.stop()
        REGISTRY.forget(old)
        env = self.env()
        if faults:
            env[f"TRIPMESH_{name.upper()}_FAULTS"] = faults
        self.procs[name] = proc = spawn(name, f"services.{name}", env, self.log_dir)
        address = self.address(name)
        wait_until(lambda: grpc_serving(address, timeout=1.0), [proc], timeout=timeout, what=name)

    def coordinator_db(self, kind: CoordinatorKind) -> Path:
        return self.var_dir / ("dbos.sqlite" if kind == "dbos" else "coordinator.db")

    def start_coordinator(
        self, kind: CoordinatorKind, *, extra_env: Mapping[str, str] | None = None, timeout: float = 60.0
    ) -> Proc:
        env = self.env()
        if kind == "nolog":
            env["TRIPMESH_COORDINATOR_STEP_LOG"] = "off"
        if kind == "dbos":
            env["TRIPMESH_DBOS_SYSTEM_DATABASE_URL"] = f"sqlite:///{self.coordinator_db('dbos')}"
        env.update(extra_env or {})
        proc = spawn("coordinator", COORDINATOR_MODULES[kind], env, self.log_dir)
        self.procs["coordinator"] = proc
        address = self.address("coordinator")
        wait_until(lambda: grpc_serving(address, timeout=1.0), [proc], timeout=timeout, what=f"coordinator ({kind})")
        return proc

    @property
    def coordinator(self) -> Proc:
        return self.procs["coordinator"]

    def stop_coordinator(self, *, kill: bool = False) -> None:
        proc = self.procs.pop("coordinator", None)
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            proc.stop()
        REGISTRY.forget(proc)

    def processes(self) -> dict[str, Proc]:
        return dict(self.procs)

    def check_alive(self) -> None:
        for proc in self.procs.values():
            if not proc.alive():
                raise MeshError(f"{proc.name} (pid {proc.pid}) died with {proc.popen.returncode}:\n{proc.log_tail()}")

    def stop(self) -> None:
        """The coordinator first, then the participants, then the sink; each by PID."""
        self.stop_coordinator()
        for name in (*reversed(PARTICIPANTS), "smtp-sink"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                proc.stop()
                REGISTRY.forget(proc)


def checkpoint(db: Path) -> None:
    """Fold the WAL back into the database file (TRUNCATE), so its size is what the log really holds."""
    if not db.exists():
        return
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def db_bytes(db: Path) -> int:
    """The database file and its WAL/journal, in bytes."""
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal"), Path(f"{db}-journal")) if p.exists())


def count_unfinished(db: Path) -> int:
    """tripmesh trips in the step log that are not terminal (read-only, beside the running coordinator)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM trips WHERE state NOT IN ('CONFIRMED', 'CANCELLED', 'NEEDS_ATTENTION')"
        ).fetchone()
    return int(row[0])


def fences(db: Path) -> dict[str, int]:
    """Each unfinished tripmesh trip's lease token, as the step log says (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute(
            "SELECT trip_id, fence FROM trips WHERE state NOT IN ('CONFIRMED', 'CANCELLED', 'NEEDS_ATTENTION')"
        )
        return {str(t): int(f) for t, f in rows}


def count_not_resumed(db: Path, before: Mapping[str, int]) -> int:
    """Of the trips unfinished with these tokens (`fences` at a crash), how many no coordinator drives
    again yet: a trip is driven again once it is terminal, or once a step's intent was written under a
    token newer than its old one (the engine writes each call's intent just before sending it)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute(
            "SELECT t.trip_id, t.state IN ('CONFIRMED', 'CANCELLED', 'NEEDS_ATTENTION'), t.fence,"
            " (SELECT max(s.fence) FROM steps s WHERE s.trip_id = t.trip_id) FROM trips t"
        )
        resumed = {
            t
            for t, terminal, fence, step_fence in rows
            if terminal or (t in before and fence > before[t] and step_fence == fence)
        }
    return sum(1 for t in before if t not in resumed)


def count_by_state(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return {str(s): int(n) for s, n in conn.execute("SELECT state, count(*) FROM trips GROUP BY state")}


def failure_reasons(db: Path, limit: int = 3, width: int = 140) -> list[tuple[str, int]]:
    """The commonest failure reasons of trips that ended CANCELLED or NEEDS_ATTENTION, shortened to `width`."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute(
            "SELECT substr(failure_reason, 1, ?), count(*) FROM trips WHERE state IN ('CANCELLED', 'NEEDS_ATTENTION') "
            "GROUP BY 1 ORDER BY 2 DESC LIMIT ?",
            (width, limit),
        ).fetchall()
    return [(str(r) or "(none)", int(n)) for r, n in rows]
