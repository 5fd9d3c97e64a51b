"""`tripmesh demo` as a person runs it: a subprocess that starts its own mesh on free ports.

One run (`--trips 24 --seed 7`, into a var dir of the test's) is read four ways: its exit code and time,
the outcome table it prints, the databases it leaves (read directly, not through the coordinator), and
the processes: none may be left behind, found by the var dir in their environment, and the children's
own logs must show the stop order (the coordinator first, the SMTP sink last).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from coordinator import demo
from coordinator.audit import PARTICIPANTS, audit_databases
from tests.support.processes import REPO, tripmesh_command

pytestmark = pytest.mark.e2e

TRIPS = 24
SEED = 7
BOUND_SECONDS = 45.0  # typically 6-8 s: start, 24 trips, audit, stop
SCENARIOS = {s.title: s for s in demo.SCENARIOS}


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    var_dir: Path

    def described(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.1f} s\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def processes_using(var_dir: Path) -> list[int]:
    """PIDs of live processes whose environment points at var_dir: the demo's children, if any are left."""
    needle = f"TRIPMESH_VAR_DIR={var_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            if stat and stat[0] in ("Z", "X"):
                continue
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def run_demo(work: Path, *args: str, bound: float = BOUND_SECONDS) -> DemoRun:
    """Run `tripmesh demo ARGS --var-dir work/var` with no TRIPMESH_* of the developer's; stop it by PID
    (SIGINT, then SIGKILL, then whatever it left) if it outlives `bound`."""
    var_dir = work / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPMESH_")}
    env["PYTHONUNBUFFERED"] = "1"
    out_path, err_path = work / "demo.stdout", work / "demo.stderr"
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [*tripmesh_command(), "demo", *args, "--var-dir", str(var_dir)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        code = process.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid in processes_using(var_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"tripmesh demo {' '.join(args)} took more than {bound:.0f} s\n{out_path.read_text()}")
    return DemoRun(code, out_path.read_text(), err_path.read_text(), time.monotonic() - started, var_dir)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    run = run_demo(tmp_path_factory.mktemp("demo"), "--trips", str(TRIPS), "--seed", str(SEED))
    yield run
    for pid in processes_using(run.var_dir):  # never leave one behind, even when a test below fails
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def table_after(text: str, header_start: str) -> list[list[str]]:
    """The rows of the table whose header line starts with `header_start`, cells split on 2+ spaces."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_the_demo_passes_in_bounded_time_and_leaves_no_process(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, demo_run.described()
    assert demo_run.seconds < BOUND_SECONDS
    verdict = [line for line in demo_run.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert verdict == [
        f"PASS  {TRIPS}/{TRIPS} trips ended as their scenario expects, 5 compensation paths ran, "
        "0 orphaned holds, 0 violations"
    ], demo_run.described()
    assert f"tripmesh demo: {TRIPS} trips, 8 at a time, seed {SEED}" in demo_run.stdout
    assert re.search(r"^mesh stopped \(smtp-sink 0, flight 0, hotel 0, payment 0, notify 0, car 0, coordinator 0\)$",
                     demo_run.stdout, re.M), demo_run.described()  # fmt: skip
    pids = [int(row[-1]) for row in table_after(demo_run.stdout, "service      address")]
    assert len(pids) == 7, demo_run.described()
    assert processes_using(demo_run.var_dir) == []


def test_every_scenario_ends_as_expected(demo_run: DemoRun) -> None:
    rows = {row[0]: row for row in table_after(demo_run.stdout, "scenario ") if row[0] != "all"}
    assert set(rows) == set(SCENARIOS), demo_run.described()
    for title, row in rows.items():
        scenario = SCENARIOS[title]
        trips, confirmed, cancelled, attention = (int(cell) for cell in row[1:5])
        assert trips >= 1
        assert attention == 0, row
        assert (confirmed, cancelled) == ((trips, 0) if scenario.expect == "CONFIRMED" else (0, trips)), row
        assert row[6] == (scenario.change or "-"), row  # how the change or cancellation after booking ended
        assert row[-1] == f"{trips}/{trips}", row
    total = next(row for row in table_after(demo_run.stdout, "scenario ") if row[0] == "all")
    assert total[1] == str(TRIPS)


def test_all_four_compensation_paths_ran(demo_run: DemoRun) -> None:
    paths = {row[0]: row for row in table_after(demo_run.stdout, "compensation path")}
    assert {"none", "flight only", "flight + hotel", "full chain"} <= set(paths), demo_run.described()
    assert paths["none"][2] == "-"
    assert paths["flight only"][2] == "flight"
    assert paths["flight + hotel"][2] == "notify, then flight+hotel"
    assert paths["full chain"][2] == "payment+notify, then flight+hotel"  # the authorisation is voided too
    assert re.search(rf"^audit: {TRIPS} trips: \d+ CONFIRMED, \d+ CANCELLED; 0 violations, 0 orphaned holds$",
                     demo_run.stdout, re.M), demo_run.described()  # fmt: skip


def test_the_databases_agree_read_directly(demo_run: DemoRun) -> None:
    """The step log and every participant's database, opened read-only after the run: every trip ended
    as its scenario (named in its trip id) expects, and the audit finds nothing."""
    with sqlite3.connect(f"file:{demo_run.var_dir / 'coordinator.db'}?mode=ro", uri=True) as conn:
        states = dict(conn.execute("SELECT trip_id, state FROM trips").fetchall())
    assert len(states) == TRIPS
    by_key = {s.key: s for s in demo.SCENARIOS}
    for trip_id, state in states.items():
        key = trip_id.split("-", 3)[3]
        assert state == by_key[key].expect, (trip_id, state)
    databases = {name: str(demo_run.var_dir / f"{name}.db") for name in ("coordinator", *PARTICIPANTS)}
    report = asyncio.run(audit_databases(databases))
    assert report.violations == []
    assert report.orphaned_holds == 0
    assert report.holds["payment"].get("HELD", 0) == 0
    with sqlite3.connect(f"file:{demo_run.var_dir / 'payment.db'}?mode=ro", uri=True) as conn:
        charged = {r for (r,) in conn.execute("SELECT reservation_id FROM reservations WHERE status = 'CONFIRMED'")}
    booked = {t for t, state in states.items() if state == "CONFIRMED" or t.endswith("-cancelled")}
    assert {r.rpartition("/")[0] for r in charged if r.endswith("/payment")} == booked  # each charged once
    changed = {t for t in states if by_key[t.split("-", 3)[3]].change in ("APPLIED", "CANCELLED")}
    assert {r.rpartition("/")[0] for r in charged if not r.endswith("/payment")} <= changed  # differences, refunds


def _log_times(log: Path, event: str) -> list[datetime]:
    pattern = re.compile(rf"^(\S+Z) \[\w+\s*\] {event}\b")
    return [
        datetime.fromisoformat(m[1].replace("Z", "+00:00"))
        for m in map(pattern.match, log.read_text().splitlines())
        if m
    ]


def test_the_mesh_stops_coordinator_first_then_participants_then_the_sink(demo_run: DemoRun) -> None:
    logs = demo_run.var_dir / "logs"
    coordinator_stopped = _log_times(logs / "coordinator.log", "stopped")
    participants_stopping = [t for name in PARTICIPANTS for t in _log_times(logs / f"{name}.log", "stopping")]
    participants_stopped = [t for name in PARTICIPANTS for t in _log_times(logs / f"{name}.log", "stopped")]
    sink_stopped = _log_times(logs / "smtp-sink.log", "smtp_sink_stopped")
    assert len(coordinator_stopped) == 1 and len(sink_stopped) == 1
    assert len(participants_stopping) == len(participants_stopped) == len(PARTICIPANTS)
    assert coordinator_stopped[0] <= min(participants_stopping)
    assert max(participants_stopped) <= sink_stopped[0]


# --- the demo's plan, without a mesh -----------------------------------------------------------------


def test_the_mix_is_seeded_and_has_every_scenario() -> None:
    counts = demo.scenario_counts(TRIPS)
    assert sum(counts.values()) == TRIPS
    assert all(n >= 1 for n in counts.values())
    assert counts["round-trip"] > counts["card-declined"]
    first, again = demo.plan_trips(TRIPS, SEED, "ab12"), demo.plan_trips(TRIPS, SEED, "ab12")
    assert [p.request for p in first] == [p.request for p in again]
    assert [p.request for p in demo.plan_trips(TRIPS, SEED + 1, "ab12")] != [p.request for p in first]
    assert all(p.trip_id.startswith("demo-ab12-") and p.trip_id.endswith(p.scenario.key) for p in first)
    assert sum(demo.scenario_counts(3).values()) == 3


def test_follow_ups_name_their_trip_and_no_two_trips_name_one_seat() -> None:
    planned = demo.plan_trips(96, SEED, "ab12")
    for p in planned:
        assert (p.then is not None) == (p.scenario.then is not None), p.trip_id
        assert p.then is None or p.then.trip_id == p.trip_id
    named = Counter(
        (flight_id, seat)
        for p in planned
        for request in (p.request, p.then)
        if isinstance(request, (demo.trip_pb.BookTripRequest, demo.trip_pb.ChangeTripRequest))
        and request.HasField("flight")
        for flight_id in (request.flight.outbound_flight_id, request.flight.return_flight_id)
        for seat in request.flight.seats
    )
    assert named and max(named.values()) == 1, named.most_common(3)
    assert any(p.request.HasField("car") for p in planned)
