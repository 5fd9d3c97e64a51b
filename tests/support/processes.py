"""`tripmesh up` as a child of the tests, started the way `make run` starts it, and stopped by PID.

`tripmesh_up` gives every component a free port (never the documented defaults, which a developer's
own `make run` may hold), runs `.venv/bin/tripmesh up --var-dir DIR` in its own session with its
output in files (a full pipe would block it), and waits for the "tripmesh is up" banner. The banner's
PIDs are checked against the launcher's real children in /proc, and each child is remembered with its
start time so that a PID the kernel hands out again is never mistaken for, or killed as, one of ours.

On the way out, whatever the tests did, the launcher gets SIGINT, then SIGKILL if it does not exit,
and any child it left behind is killed by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.launcher import free_ports as launcher_free_ports
from services.kit.healthcheck import grpc_serving

REPO = Path(__file__).resolve().parents[2]
# component (as the banner names it) -> TRIPMESH_<prefix>_PORT
PORT_PREFIXES = {
    "coordinator": "COORDINATOR",
    "flight": "FLIGHT",
    "hotel": "HOTEL",
    "payment": "PAYMENT",
    "notify": "NOTIFY",
    "car": "CAR",
    "smtp-sink": "SMTP_SINK",
    "dashboard": "DASHBOARD",
}
DEFAULT_PORTS = {
    "coordinator": 50050,
    "flight": 50051,
    "hotel": 50052,
    "payment": 50053,
    "notify": 50054,
    "car": 50055,
    "smtp-sink": 2525,
    "dashboard": 8080,
}
METRICS = ("coordinator", "flight", "hotel", "payment", "notify", "car")  # TRIPMESH_<C>_METRICS_PORT
BANNER = "tripmesh is up:"
STARTED = re.compile(r"^tripmesh: started (?P<name>[\w-]+) \(pid (?P<pid>\d+)\)", re.M)
BANNER_ROW = re.compile(r"^(?P<name>[\w-]+)\s+(?P<address>\S+:\d+)\s+(?P<data>\S+)\s+(?P<pid>\d+)$")
METRICS_ROW = re.compile(r"^(?P<name>[\w-]+)\s+http://(?P<address>\S+:\d+)/metrics$")


# Ports for processes a test starts on fixed ports: each pytest-xdist worker has a range of its own, below
# the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 here), which bind(0) never hands
# out. So a process restarted on its port (the crash tests kill and restart the coordinator) cannot find
# it taken by another worker's server: once, a restarted coordinator's port answered as the other worker's
# participant (CancelTrip: UNIMPLEMENTED), because both picked ports with bind(0).
WORKER_PORTS = 2_500
FIRST_WORKER_PORT = 20_000
_port_cursor: dict[str, int] = {}


def free_ports(count: int, avoid: Iterable[int] = ()) -> list[int]:
    """`count` distinct ports free now, from this worker's range, never a documented default or `avoid`."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    first = FIRST_WORKER_PORT + index * WORKER_PORTS
    skip = {*DEFAULT_PORTS.values(), *avoid}
    cursor = _port_cursor.setdefault(worker, os.getpid() % WORKER_PORTS)  # another run's leftovers: elsewhere
    found: list[int] = []
    for step in range(WORKER_PORTS):
        port = first + (cursor + step) % WORKER_PORTS
        if port not in skip and _bindable(port):
            found.append(port)
            if len(found) == count:
                _port_cursor[worker] = (cursor + step + 1) % WORKER_PORTS  # next time, ports not just used
                return found
    return launcher_free_ports(count, avoid=skip)  # the range is full: fall back to the kernel's choice


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the state on (field 3), or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.rpartition(")")[2].split()  # the command name may hold spaces and parentheses


def children_of(pid: int) -> set[int]:
    """PIDs of the processes whose parent is `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[1] == str(pid):
                found.add(int(entry.name))
    return found


@dataclass(frozen=True)
class Pid:
    """A process we started, told apart from a later one that reuses its PID by its start time."""

    name: str
    pid: int
    start_ticks: str

    @classmethod
    def of(cls, name: str, pid: int) -> Pid:
        fields = _stat_fields(pid)
        if fields is None:
            raise AssertionError(f"{name} (pid {pid}) is not running")
        return cls(name, pid, fields[19])  # field 22: start time in clock ticks after boot

    def alive(self) -> bool:
        fields = _stat_fields(self.pid)
        return fields is not None and fields[19] == self.start_ticks and fields[0] not in ("Z", "X")

    def environ(self) -> dict[str, str]:
        raw = Path(f"/proc/{self.pid}/environ").read_bytes()
        return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


@dataclass(frozen=True)
class BannerRow:
    address: str
    data: str
    pid: int


@dataclass
class RunningMesh:
    process: subprocess.Popen[bytes]
    var_dir: Path
    ports: dict[str, int]
    env: dict[str, str]
    stdout_path: Path
    stderr_path: Path
    banner: dict[str, BannerRow] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # component -> host:port of its /metrics, per the banner
    children: dict[str, Pid] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def mail_dir(self) -> Path:
        return self.var_dir / "mail"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self, tail: int = 8000) -> str:
        """Both streams, for assertion messages."""
        return f"--- tripmesh up stdout\n{self.stdout()}\n--- stderr (tail)\n{self.stderr()[-tail:]}"

    def leftovers(self) -> list[Pid]:
        return [child for child in self.children.values() if child.alive()]

    def wait_until_gone(self, timeout: float) -> list[Pid]:
        """Poll until every child has exited or `timeout` passes; the ones still alive."""
        deadline = time.monotonic() + timeout
        while (alive := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return alive

    def stop(self, signum: int = signal.SIGINT, timeout: float = 15.0) -> int | None:
        """Signal the launcher by PID and wait up to `timeout` s; its exit code, None if still running."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def track_started(self) -> None:
        """Remember every child the launcher says it started, even if the banner never came."""
        for match in STARTED.finditer(self.stderr()):
            name, pid = match["name"], int(match["pid"])
            fields = _stat_fields(pid)
            if name not in self.children and fields is not None and fields[1] == str(self.process.pid):
                self.children[name] = Pid(name, pid, fields[19])

    def kill_everything(self) -> None:
        """Last resort, by PID: the launcher, then every child it left behind."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for child in self.children.values():
            child.kill()

    def wait_for_banner(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while BANNER not in (text := self.stdout()) or "Ctrl-C stops everything" not in text:
            if self.process.poll() is not None:
                raise AssertionError(f"tripmesh up exited with {self.process.returncode}\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no '{BANNER}' banner after {timeout:.0f} s\n{self.output()}")
            time.sleep(0.05)
        for line in text.split(BANNER, 1)[1].splitlines():
            if match := BANNER_ROW.match(line.strip()):
                self.banner[match["name"]] = BannerRow(match["address"], match["data"], int(match["pid"]))
            elif match := METRICS_ROW.match(line.strip()):
                self.metrics[match["name"]] = match["address"]
        self.children = {name: Pid.of(name, row.pid) for name, row in self.banner.items()}


def mesh_env(
    ports: Mapping[str, int], base: Mapping[str, str] | None = None, metrics_ports: Mapping[str, int] | None = None
) -> dict[str, str]:
    """The caller's environment without any TRIPMESH_* of a developer's, plus one port per component
    (and one metrics port each, when given: never the defaults, which a `make run` may hold).

    Nothing else: the participant addresses the coordinator dials and notify's SMTP server are what
    the launcher derives from these ports, as it does for `make run`.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("TRIPMESH_")}
    env.update({f"TRIPMESH_{PORT_PREFIXES[name]}_PORT": str(port) for name, port in ports.items()})
    for name, port in (metrics_ports or {}).items():
        env[f"TRIPMESH_{PORT_PREFIXES[name]}_METRICS_PORT"] = str(port)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tripmesh_command() -> list[str]:
    """`.venv/bin/tripmesh` of the interpreter running the tests: the console script `make run` uses."""
    script = Path(sys.executable).with_name("tripmesh")
    return [str(script)] if script.exists() else [sys.executable, "-m", "coordinator.cli"]


@contextlib.contextmanager
def tripmesh_up(
    work_dir: Path,
    *,
    startup_timeout: float = 60.0,
    stop_timeout: float = 20.0,
    args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[RunningMesh]:
    """Run `tripmesh up --var-dir <work_dir>/var [args]` on free ports until the block ends; stop it by PID."""
    free = free_ports(len(PORT_PREFIXES) + len(METRICS))
    ports = dict(zip(PORT_PREFIXES, free[: len(PORT_PREFIXES)], strict=True))
    env = mesh_env(ports, metrics_ports=dict(zip(METRICS, free[len(PORT_PREFIXES) :], strict=True)))
    env.update(extra_env or {})
    var_dir = work_dir / "var"
    stdout_path, stderr_path = work_dir / "up.stdout", work_dir / "up.stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            [*tripmesh_command(), "up", "--var-dir", str(var_dir), *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # a Ctrl-C at the test's terminal reaches pytest, which stops it
        )
    mesh = RunningMesh(process, var_dir, ports, env, stdout_path, stderr_path)
    try:
        mesh.wait_for_banner(startup_timeout)
        coordinator = mesh.address("coordinator")
        assert grpc_serving(coordinator, timeout=5.0), f"coordinator at {coordinator} is not SERVING\n{mesh.output()}"
        yield mesh
    finally:
        mesh.track_started()
        if mesh.process.poll() is None and mesh.stop(signal.SIGINT, stop_timeout) is None:
            print(f"tripmesh up (pid {process.pid}) ignored SIGINT; killing it by PID", file=sys.stderr)
        mesh.kill_everything()
        left = mesh.wait_until_gone(5.0)
        assert not left, f"left running: {left}\n{mesh.output()}"
