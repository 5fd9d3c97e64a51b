"""`tripmesh change` and `tripmesh cancel` as a person runs them: the real command in a process of its own,
against the in-process mesh (real participants and databases, real gRPC on loopback). Each prints the trip
as `tripmesh trip` does, headed by how the change or cancellation ended; a refused request is a clear error
on stderr and exit 1, and so is a change that could not be had (REVERTED: the trip stands as it was). The
databases are read directly, and the mesh fixture audits them after each test (I1-I8)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.support.databases import Databases
from tests.support.mesh import Mesh, audited_mesh
from tests.support.processes import REPO, tripmesh_command

pytestmark = pytest.mark.contract

BOOK = [
    "book", "--customer", "cust-ada", "--email", "ada@example.com", "--flight", "TM101-20270315",
    "--return", "TM102-20270322", "--passengers", "2", "--seats", "14A,14C", "--hotel", "lis-alfama",
    "--check-in", "2027-03-15", "--check-out", "2027-03-22", "--car-city", "Lisbon", "--pick-up", "2027-03-15",
    "--drop-off", "2027-03-18", "--payment-method", "pm_ada_visa",
]  # fmt: skip


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


@pytest.fixture
async def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, databases: Databases) -> AsyncIterator[Mesh]:
    async with audited_mesh(tmp_path, monkeypatch, databases=databases) as running:
        yield running


async def tripmesh(mesh: Mesh, *args: str) -> Run:
    """`tripmesh ARGS --address <the mesh's coordinator>`, with no TRIPMESH_* of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPMESH_")}
    process = await asyncio.create_subprocess_exec(
        *tripmesh_command(),
        *args,
        "--address",
        f"127.0.0.1:{mesh.coordinator.port}",
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def statuses(mesh: Mesh, participant: str, trip_id: str) -> dict[str, str]:
    async with mesh.participants[participant].engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT reservation_id, status FROM reservations WHERE reservation_id LIKE :trip"),
            {"trip": f"{trip_id}/%"},
        )
        return {r.reservation_id: r.status for r in rows}


async def booked(mesh: Mesh, trip_id: str) -> None:
    run = await tripmesh(mesh, *BOOK, "--trip-id", trip_id)
    assert run.code == 0 and "state     CONFIRMED" in run.stdout, run
    assert re.search(rf"^car\s+{trip_id}/car\s+CONFIRMED\s", run.stdout, re.M), run


async def test_change_prints_the_applied_change_and_a_resend_follows_the_same_change(mesh: Mesh) -> None:
    await booked(mesh, "cli-longer")
    change = ["change", "cli-longer", "--change-id", "longer", "--check-out", "2027-03-24"]
    run = await tripmesh(mesh, *change)
    assert run.code == 0, run
    assert "changing trip cli-longer (change id longer)" in run.stderr
    headline = run.stdout.splitlines()[0]
    assert headline.startswith("change longer of cli-longer: APPLIED (hotel reserved anew; difference "), run
    assert "state     CONFIRMED" in run.stdout and "longer  change         2  APPLIED  hotel" in run.stdout
    assert await statuses(mesh, "hotel", "cli-longer") == {
        "cli-longer/hotel": "CANCELLED",
        "cli-longer/hotel.2": "CONFIRMED",
    }
    again = await tripmesh(mesh, *change)  # the same change id: the same change, nothing reserved twice
    assert again.code == 0 and again.stdout.splitlines()[0] == headline, again
    assert len(await statuses(mesh, "hotel", "cli-longer")) == 2
    shown = await tripmesh(mesh, "trip", "cli-longer")
    assert shown.code == 0 and "longer  change         2  APPLIED" in shown.stdout, shown


async def test_a_change_that_cannot_be_had_exits_1_and_leaves_the_trip_as_it_was(mesh: Mesh) -> None:
    await booked(mesh, "cli-luxury")
    before = {name: await statuses(mesh, name, "cli-luxury") for name in ("flight", "hotel", "car", "payment")}
    run = await tripmesh(
        mesh, "change", "cli-luxury", "--car-city", "Vienna", "--car-class", "luxury",
        "--pick-up", "2027-03-15", "--drop-off", "2027-03-18",
    )  # fmt: skip
    assert run.code == 1, run
    assert run.stdout.startswith("change change-"), run
    assert ": REVERTED, the trip stands as it was: car.reserve@2 was refused" in run.stdout.splitlines()[0], run
    assert "state     CONFIRMED" in run.stdout
    after = {name: await statuses(mesh, name, "cli-luxury") for name in ("flight", "hotel", "car", "payment")}
    assert after == before  # the refused car held nothing; nothing else moved


async def test_refused_requests_are_a_clear_error_and_exit_1(mesh: Mesh) -> None:
    sold_out = [
        "book", "--trip-id", "cli-sold-out", "--customer", "cust-ada", "--email", "ada@example.com",
        "--flight", "TM401-20270316", "--cabin", "business", "--passengers", "9", "--payment-method", "pm_ada_visa",
    ]  # fmt: skip
    assert "state     CANCELLED" in (await tripmesh(mesh, *sold_out)).stdout
    run = await tripmesh(mesh, "change", "cli-sold-out", "--passengers", "2")
    assert run.code == 1 and run.stdout == "", run
    assert "FAILED_PRECONDITION: trip 'cli-sold-out' is CANCELLED; only a CONFIRMED trip can be changed" in run.stderr
    assert "reason: TRIP_NOT_CHANGEABLE" in run.stderr
    missing = await tripmesh(mesh, "cancel", "no-such-trip")
    assert missing.code == 1 and missing.stdout == "", missing
    assert "NOT_FOUND: no trip 'no-such-trip'" in missing.stderr and "reason: TRIP_NOT_FOUND" in missing.stderr
    nothing = await tripmesh(mesh, "change", "cli-sold-out")
    assert nothing.code == 1 and "nothing to change" in nothing.stderr, nothing


async def test_cancel_releases_everything_and_prints_the_cancelled_trip(mesh: Mesh) -> None:
    await booked(mesh, "cli-cancel")
    run = await tripmesh(mesh, "cancel", "cli-cancel")
    assert run.code == 0, run
    assert run.stdout.startswith("cancelled cli-cancel: cancelled by the customer"), run
    assert "state     CANCELLED" in run.stdout and "cancel  cancel         2  CANCELLED" in run.stdout
    for name in ("flight", "hotel", "car"):
        assert set((await statuses(mesh, name, "cli-cancel")).values()) == {"CANCELLED"}, name
    again = await tripmesh(mesh, "cancel", "cli-cancel")  # a cancelled trip is answered as it is
    assert again.code == 0 and again.stdout.splitlines()[0] == run.stdout.splitlines()[0], again
