"""`tripmesh up` as `make run` runs it: starts the seven processes, prints where they listen, and stops them.

Every port is a free one and the var dir a tmp dir (never the documented defaults). The launcher is
stopped the way a person or a supervisor would (SIGINT, SIGTERM); a child that dies takes the mesh
down with a non-zero exit. Every process is stopped by PID whatever happens.
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
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.kit.healthcheck import grpc_serving
from tests.support.processes import free_ports as worker_free_ports

pytestmark = pytest.mark.e2e

RESERVED_PORTS = {2525, 8080, *range(50050, 50056)}
COMPONENTS = ("COORDINATOR", "FLIGHT", "HOTEL", "PAYMENT", "NOTIFY", "SMTP_SINK", "DASHBOARD")
ROW = re.compile(r"^(?P<service>[\w-]+)\s+(?P<address>\S+:\d+)\s+(?P<data>\S+)\s+(?P<pid>\d+)$")


def free_ports(count: int) -> list[int]:
    """Free ports from this test worker's own range (tests/support/processes.py); never a documented default."""
    return worker_free_ports(count, avoid=RESERVED_PORTS)


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    env: dict[str, str]
    var_dir: Path

    def output(self) -> str:
        return f"--- stdout\n{self.stdout.read_text()}\n--- stderr\n{self.stderr.read_text()[-6000:]}"

    def wait_until_up(self, timeout: float = 90) -> dict[str, tuple[str, str, int]]:
        """The table `tripmesh up` prints: service -> (address, data, pid)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout.read_text()
            if "(Ctrl-C stops everything)" in text:
                rows = (ROW.match(line) for line in text.split("tripmesh is up:", 1)[1].splitlines())
                return {m["service"]: (m["address"], m["data"], int(m["pid"])) for m in rows if m}
            if self.process.poll() is not None:
                pytest.fail(f"tripmesh up exited with {self.process.returncode}\n{self.output()}")
            time.sleep(0.1)
        pytest.fail(f"tripmesh up not up after {timeout} s\n{self.output()}")

    def started_pids(self) -> list[int]:
        return [int(pid) for pid in re.findall(r"tripmesh: started \S+ \(pid (\d+)\)", self.stderr.read_text())]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPMESH_")}
    for component, port in zip(COMPONENTS, free_ports(len(COMPONENTS)), strict=True):
        env[f"TRIPMESH_{component}_PORT"] = str(port)
    env["TRIPMESH_LOG_LEVEL"] = "warning"
    var_dir = tmp_path / "var"
    stdout, stderr = tmp_path / "up.out", tmp_path / "up.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "up", "--var-dir", str(var_dir)],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    handle = Up(process, stdout, stderr, env, var_dir)
    try:
        yield handle
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in handle.started_pids():  # only if the launcher itself failed to stop them
            with contextlib.suppress(ProcessLookupError):
                if alive(pid) and "python" in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)


def test_up_starts_everything_and_sigint_stops_everything(up: Up) -> None:
    table = up.wait_until_up()
    assert list(table) == ["coordinator", "smtp-sink", "flight", "hotel", "payment", "notify", "car", "dashboard"]
    assert table["coordinator"][0] == f"127.0.0.1:{up.env['TRIPMESH_COORDINATOR_PORT']}"
    assert table["flight"][1] == str(up.var_dir / "flight.db")
    assert table["smtp-sink"][1] == str(up.var_dir / "mail") + "/"
    assert (up.var_dir / "mail").is_dir()
    for service in ("coordinator", "flight", "hotel", "payment", "notify", "car"):
        assert grpc_serving(table[service][0]), service
    assert "grpcurl -plaintext" in up.stdout.read_text()
    dashboard = f"http://127.0.0.1:{up.env['TRIPMESH_DASHBOARD_PORT']}/"
    assert table["dashboard"][1] == dashboard and f"dashboard: {dashboard}" in up.stdout.read_text()
    with urllib.request.urlopen(f"{dashboard}healthz", timeout=5) as answer:
        assert answer.read() == b"ok\n"

    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(timeout=30) == 0, up.output()
    pids = [pid for _, _, pid in table.values()]
    assert not [pid for pid in pids if alive(pid)], up.output()
    assert "stopped (smtp-sink 0, flight 0, hotel 0, payment 0, notify 0, car 0, coordinator 0, dashboard 0)" in (
        up.stderr.read_text()
    )


def test_a_child_that_dies_takes_the_mesh_down_with_a_non_zero_exit(up: Up) -> None:
    table = up.wait_until_up()
    hotel_pid = table["hotel"][2]
    os.kill(hotel_pid, signal.SIGKILL)
    assert up.process.wait(timeout=30) == 1, up.output()
    assert f"hotel (pid {hotel_pid}) was killed by SIGKILL unexpectedly" in up.stderr.read_text()
    assert not [pid for _, _, pid in table.values() if alive(pid)], up.output()


def test_up_refuses_to_start_on_a_port_in_use(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPMESH_")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env["TRIPMESH_FLIGHT_PORT"] = str(port)
        result = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "up", "--var-dir", str(tmp_path / "var")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port} (flight) is already in use" in result.stderr
    assert "started" not in result.stderr
