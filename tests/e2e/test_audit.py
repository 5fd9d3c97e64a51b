"""`tripmesh audit` on the databases a real mesh left: clean, then with violations planted in copies.

The var dir comes from a short `tripmesh demo --var-dir` run (every scenario, every compensation path).
Each test works on its own copy, changes rows with plain sqlite3 the way a bug would, and runs the
command as a subprocess: the exit code (0 clean, 1 violation, 2 unreadable) and the text must name what
is wrong.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_demo import processes_using, run_demo
from tests.support.processes import REPO, tripmesh_command

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mesh_var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = run_demo(tmp_path_factory.mktemp("audit-demo"), "--trips", "8", "--seed", "3")
    assert run.returncode == 0, run.described()
    assert processes_using(run.var_dir) == []
    return run.var_dir


@pytest.fixture
def var_copy(mesh_var_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "var"
    shutil.copytree(mesh_var_dir, copy, ignore=shutil.ignore_patterns("mail", "logs"))
    return copy


def audit(var_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPMESH_")}
    return subprocess.run(
        [*tripmesh_command(), "audit", "--var-dir", str(var_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fingerprint(var_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(var_dir.iterdir()) if p.is_file()}


def a_trip(var_dir: Path, scenario: str) -> str:
    with sqlite3.connect(var_dir / "coordinator.db") as conn:
        row = conn.execute("SELECT trip_id, state FROM trips WHERE trip_id LIKE ?", (f"%-{scenario}",)).fetchone()
    assert row is not None and row[1] == "CANCELLED", row
    return str(row[0])


def test_a_clean_mesh_passes_and_nothing_is_written(var_copy: Path) -> None:
    before = fingerprint(var_copy)
    result = audit(var_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"audit (read-only) of {var_copy}/: coordinator.db, flight.db, hotel.db, payment.db, notify.db, car.db"
    )
    assert lines[2].startswith("8 trips: ") and "CONFIRMED" in lines[2] and "CANCELLED" in lines[2]
    assert "orphaned holds: 0" in lines
    assert lines[-1].startswith("OK    no violation of I1-I6 (8 trips, ")
    assert fingerprint(var_copy) == before  # read-only: not a byte changed, no -wal or -shm created


def test_a_hold_left_for_a_cancelled_trip_is_an_orphan_and_fails(var_copy: Path) -> None:
    trip_id = a_trip(var_copy, "card-declined")
    with sqlite3.connect(var_copy / "hotel.db") as conn:
        changed = conn.execute(
            "UPDATE reservations SET status = 'HELD' WHERE reservation_id = ?", (f"{trip_id}/hotel",)
        ).rowcount
    assert changed == 1
    result = audit(var_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "orphaned holds: 1" in out
    assert f"hotel        {trip_id}/hotel  HELD    CANCELLED" in out
    assert f"  I3: cancelled trip {trip_id} still has hotel HELD" in out
    assert f"  I4: hotel still HELD {trip_id}/hotel for CANCELLED trip" in out
    assert "  I5 hotel: " in out  # the room counters no longer match the reservations either
    assert "FAIL  " in out


def test_money_captured_for_a_trip_that_does_not_exist_fails(var_copy: Path) -> None:
    with sqlite3.connect(var_copy / "payment.db") as conn:
        conn.execute(
            "INSERT INTO reservations SELECT 'ghost-1/payment', 'CONFIRMED', fingerprint, details, price_minor,"
            " currency, expire_at, created_at, updated_at, tombstone FROM reservations LIMIT 1"
        )
    result = audit(var_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "orphaned holds: 1" in out
    assert "payment      ghost-1/payment  CONFIRMED  missing" in out
    assert "  I4: payment CONFIRMED ghost-1/payment belongs to no trip" in out
    assert "  I6: money captured for trip ghost-1 which is missing" in out


def test_a_directory_without_a_mesh_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    result = audit(tmp_path / "nothing-here")
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"no database at {tmp_path / 'nothing-here'}/" in result.stderr
    assert not (tmp_path / "nothing-here").exists()  # and nothing was created
