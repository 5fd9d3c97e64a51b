"""Run the mesh's processes as children: start, wait until healthy, stop every one by its PID.

`Launcher` is what `tripmesh up` and the end-to-end tests share. Each child is
`sys.executable -m <module>` with its own environment, in its own process group, so a Ctrl-C at the
terminal reaches only the launcher, which then stops the children itself, in waves: the coordinator
first (so a saga in flight finishes its calls, or stops at a step boundary, while the participants
still answer; the dashboard, its client, goes with it), then the participants, then the SMTP sink
(notify delivers to it until it stops). Each
wave gets SIGTERM, up to `grace` seconds to exit, then SIGKILL for whoever is left.

`mesh_plan` describes the whole mesh as `tripmesh up` starts it (the SMTP sink, the four participants,
the coordinator, then the dashboard), with every address and database file taken from the same TRIPMESH_* variables
the services read, so what the launcher prints is where the services really listen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from services.kit.healthcheck import connect_address, grpc_serving, split_address, tcp_open
from services.kit.metrics import DEFAULT_METRICS_PORTS

Probe = Callable[[], bool]


class LaunchError(Exception):
    """A child could not be started, exited, or did not become healthy in time."""


@dataclass
class Child:
    name: str
    module: str
    process: subprocess.Popen[bytes]
    probe: Probe | None
    log_path: Path | None = None
    log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe_exit(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            return f"{self.name} (pid {self.pid}) was killed by {signal.Signals(-code).name}"
        where = f"; its log: {self.log_path}" if self.log_path else ""
        return f"{self.name} (pid {self.pid}) exited with code {code}{where}"


@dataclass
class Launcher:
    """Starts children and stops them by PID. Use as a context manager so they never outlive it."""

    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path | None = None
    python: str = sys.executable
    log_dir: Path | None = None  # None: children inherit this process's stdout and stderr
    children: list[Child] = field(default_factory=list)

    def start(
        self, name: str, module: str, env: Mapping[str, str] | None = None, *, probe: Probe | None = None
    ) -> subprocess.Popen[bytes]:
        if self.child(name, missing_ok=True) is not None:
            raise LaunchError(f"{name} is already started")
        log_path = log_file = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            log_file = log_path.open("ab")
        process = subprocess.Popen(
            [self.python, "-m", module],
            env={**self.base_env, **(env or {})},
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT if log_file is not None else None,
            process_group=0,
        )
        self.children.append(Child(name, module, process, probe, log_path, log_file))
        return process

    def child(self, name: str, *, missing_ok: bool = False) -> Child | None:
        for child in self.children:
            if child.name == name:
                return child
        if missing_ok:
            return None
        raise LaunchError(f"no child named {name}")

    def wait_healthy(
        self, *names: str, timeout: float = 30.0, cancel: threading.Event | None = None, interval: float = 0.1
    ) -> None:
        """Wait until every named child (all when none named) passes its probe; raise LaunchError if one
        exits first, the timeout passes, or `cancel` is set."""
        pending = [c for c in self.children if (not names or c.name in names) and c.probe is not None]
        deadline = time.monotonic() + timeout
        waiter = cancel if cancel is not None else threading.Event()
        while pending:
            for child in list(pending):
                if child.process.poll() is not None:
                    raise LaunchError(f"{child.describe_exit()} before it was healthy")
                assert child.probe is not None
                if child.probe():
                    pending.remove(child)
            if not pending:
                return
            if time.monotonic() > deadline:
                late = ", ".join(c.name for c in pending)
                raise LaunchError(f"not healthy after {timeout:.0f} s: {late}")
            if waiter.wait(interval):
                raise LaunchError("interrupted while waiting for the mesh to start")

    def exited(self) -> list[Child]:
        """The children that are no longer running."""
        return [c for c in self.children if c.process.poll() is not None]

    def stop_all(self, *, grace: float = 10.0) -> dict[str, int]:
        """Stop every child still running, wave by wave (`stop_waves`: the coordinator, then the
        participants, then the SMTP sink): SIGTERM the wave, wait up to `grace` seconds for it, SIGKILL
        whoever is left, then the next wave. Return each child's exit code (negative: killed by that
        signal), in start order."""
        for wave in stop_waves(self.children):
            self._stop_wave(wave, grace)
        codes = {c.name: c.process.returncode for c in self.children}
        for child in self.children:
            if child.log_file is not None:
                child.log_file.close()
        self.children.clear()
        return codes

    @staticmethod
    def _stop_wave(wave: list[Child], grace: float) -> None:
        for child in wave:
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in wave:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"tripmesh: {child.name} (pid {child.pid}) ignored SIGTERM; killing it", file=sys.stderr)
                child.process.kill()
                child.process.wait()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()


def stop_waves(children: Sequence[Child]) -> list[list[Child]]:
    """The order to stop children in: the coordinator (by module) first, the SMTP sink last, everyone
    else (the participants, or any other child) in between; within a wave the last started first.
    Empty waves are left out."""

    def rank(child: Child) -> int:
        if child.module in (COORDINATOR.module, DASHBOARD.module):
            return 0
        if child.module == SMTP_SINK.module:
            return 2
        return 1

    newest_first = list(reversed(children))
    waves = [[c for c in newest_first if rank(c) == r] for r in range(3)]
    return [wave for wave in waves if wave]


def free_ports(count: int, *, host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> list[int]:
    """`count` distinct ports the kernel says are free now (bound to port 0 together, then released),
    none of them in `avoid` (say, the documented defaults a developer's own mesh may hold)."""
    skip = set(avoid)
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < count:
            sock = socket.socket()
            sock.bind((host, 0))
            if sock.getsockname()[1] in skip:
                sock.close()
                continue
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_in_use(address: str) -> bool:
    """True when something already listens on address (a mesh left running, another program)."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


# --- the mesh as `tripmesh up` runs it ------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    prefix: str  # TRIPMESH_<prefix>_PORT, ..._HOST, ..._DATABASE_URL
    default_port: int
    kind: Literal["grpc", "tcp", "http"] = "grpc"


SMTP_SINK = Component("smtp-sink", "services.notify.smtp_sink", "SMTP_SINK", 2525, "tcp")
PARTICIPANTS = (
    Component("flight", "services.flight", "FLIGHT", 50051),
    Component("hotel", "services.hotel", "HOTEL", 50052),
    Component("payment", "services.payment", "PAYMENT", 50053),
    Component("notify", "services.notify", "NOTIFY", 50054),
    Component("car", "services.car", "CAR", 50055),
)
COORDINATOR = Component("coordinator", "coordinator", "COORDINATOR", 50050)
# A client of the coordinator's public API, nothing more; its "data" is the address to open.
DASHBOARD = Component("dashboard", "coordinator.dashboard", "DASHBOARD", 8080, "http")
# Started tier by tier; the processes of one tier start together.
TIERS: tuple[tuple[Component, ...], ...] = ((SMTP_SINK,), PARTICIPANTS, (COORDINATOR,), (DASHBOARD,))


@dataclass(frozen=True)
class PlannedProcess:
    component: Component
    listen: str  # host:port the process binds
    address: str  # host:port to dial
    data: str  # its database (URL or file) or, for the sink, its mail directory
    metrics: str | None = None  # host:port of its /metrics (TRIPMESH_<C>_METRICS_PORT), None when off
    metrics_explicit: bool = False  # the metrics port was configured rather than the default

    @property
    def probe(self) -> Probe:
        address = self.address
        if self.component.kind in ("tcp", "http"):
            return lambda: tcp_open(address, timeout=1.0)
        return lambda: grpc_serving(address, timeout=1.0)


@dataclass(frozen=True)
class MeshPlan:
    env: dict[str, str]  # the TRIPMESH_* variables every child gets, on top of the inherited ones
    processes: list[PlannedProcess]

    def tiers(self) -> Iterator[list[PlannedProcess]]:
        for tier in TIERS:
            processes = [p for p in self.processes if p.component in tier]
            if processes:
                yield processes


def mesh_plan(
    environ: Mapping[str, str], *, var_dir: str, json_logs: bool = False, dashboard: bool = False
) -> MeshPlan:
    """Where each process listens and keeps its data, from TRIPMESH_* variables and their defaults.

    Variables already set win; the launcher only fills in what wires the processes together (the
    coordinator's participant addresses, notify's SMTP server) so that changing one port is enough.
    With `dashboard`, the plan ends with the dashboard, pointed at the coordinator (`tripmesh up`).
    """
    env = {"TRIPMESH_VAR_DIR": var_dir}
    if json_logs:
        env["TRIPMESH_LOG_FORMAT"] = "json"
    default_host = environ.get("TRIPMESH_HOST", "127.0.0.1")
    processes: list[PlannedProcess] = []
    for component in (SMTP_SINK, *PARTICIPANTS, COORDINATOR, *((DASHBOARD,) if dashboard else ())):
        # The sink is a local test double: it listens on loopback unless told otherwise.
        fallback_host = "127.0.0.1" if component is SMTP_SINK else default_host
        host = environ.get(f"TRIPMESH_{component.prefix}_HOST", fallback_host)
        port = environ.get(f"TRIPMESH_{component.prefix}_PORT", str(component.default_port))
        listen = f"{host}:{port}"
        if component is SMTP_SINK:
            data = environ.get("TRIPMESH_SMTP_SINK_DIR") or os.path.join(var_dir, "mail") + os.sep
        elif component is DASHBOARD:
            data = f"http://{connect_address(listen)}/"
        else:
            default_db = os.path.join(var_dir, f"{component.name}.db")
            data = environ.get(f"TRIPMESH_{component.prefix}_DATABASE_URL", default_db)
        metrics, explicit = _metrics_address(environ, component, host)
        processes.append(PlannedProcess(component, listen, connect_address(listen), data, metrics, explicit))
    by_name = {p.component.name: p for p in processes}
    for participant in PARTICIPANTS:
        key = f"TRIPMESH_COORDINATOR_{participant.prefix}_ADDRESS"
        env[key] = environ.get(key, by_name[participant.name].address)
    if dashboard:
        key = "TRIPMESH_DASHBOARD_COORDINATOR_ADDRESS"
        env[key] = environ.get(key, by_name[COORDINATOR.name].address)
    sink_host, sink_port = split_address(by_name[SMTP_SINK.name].address)
    env["TRIPMESH_NOTIFY_SMTP_HOST"] = environ.get("TRIPMESH_NOTIFY_SMTP_HOST", sink_host)
    env["TRIPMESH_NOTIFY_SMTP_PORT"] = environ.get("TRIPMESH_NOTIFY_SMTP_PORT", str(sink_port))
    return MeshPlan(env=env, processes=processes)


def _metrics_address(environ: Mapping[str, str], component: Component, host: str) -> tuple[str | None, bool]:
    """Where a component serves /metrics (as services/kit/metrics.py reads it), and whether configured."""
    if component.kind != "grpc":
        return None, False
    raw = environ.get(f"TRIPMESH_{component.prefix}_METRICS_PORT")
    port = raw if raw is not None else str(DEFAULT_METRICS_PORTS[component.name])
    if port.strip() == "0":
        return None, raw is not None
    metrics_host = environ.get(f"TRIPMESH_{component.prefix}_METRICS_HOST", host)
    return connect_address(f"{metrics_host}:{port.strip()}"), raw is not None


def metrics_off(plan: MeshPlan, process: PlannedProcess) -> MeshPlan:
    """The plan with `process`'s metrics turned off (its default port is taken by someone else)."""
    env = {**plan.env, f"TRIPMESH_{process.component.prefix}_METRICS_PORT": "0"}
    processes = [dataclasses.replace(p, metrics=None) if p is process else p for p in plan.processes]
    return MeshPlan(env=env, processes=processes)


def start_mesh(
    launcher: Launcher,
    plan: MeshPlan,
    *,
    timeout: float,
    cancel: threading.Event | None = None,
    on_start: Callable[[PlannedProcess, int], None] | None = None,
) -> None:
    """Start the plan's processes tier by tier (the sink, the participants, the coordinator), each tier
    healthy before the next starts; `on_start(process, pid)` is told of each start. Raises LaunchError."""
    for tier in plan.tiers():
        for process in tier:
            child = launcher.start(process.component.name, process.component.module, plan.env, probe=process.probe)
            if on_start is not None:
                on_start(process, child.pid)
        launcher.wait_healthy(*(p.component.name for p in tier), timeout=timeout, cancel=cancel)
