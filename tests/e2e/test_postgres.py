"""The mesh's main path on PostgreSQL: `tripmesh up` with every component's database on the local server.

Each component gets an empty PostgreSQL database through TRIPMESH_<C>_DATABASE_URL (nothing else
changes), so the services migrate and seed them on start. Then the README's booking and a sold-out
booking go through the `tripmesh` CLI, the confirmation mail arrives, and after the mesh stops
`tripmesh audit` reads the five PostgreSQL databases and finds every invariant holding. (The same
path on SQLite is tests/e2e/test_mesh.py.)
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.kit.migrate import KINDS
from tests.support.databases import Databases
from tests.support.processes import REPO, tripmesh_command, tripmesh_up

pytestmark = pytest.mark.e2e

BOOK = [
    "book", "--customer", "cust-ada", "--email", "ada@example.com", "--flight", "TM101-20270315",
    "--return", "TM102-20270322", "--passengers", "2", "--hotel", "lis-alfama", "--check-in", "2027-03-15",
    "--check-out", "2027-03-22", "--payment-method", "pm_ada_visa",
]  # fmt: skip
SOLD_OUT = [
    "book", "--customer", "cust-ada", "--email", "ada@example.com", "--flight", "TM401-20270316",
    "--cabin", "business", "--passengers", "9", "--payment-method", "pm_ada_visa",
]  # fmt: skip


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Databases]:
    made = Databases("postgresql", tmp_path)
    try:
        yield made
    finally:
        made.close()


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tripmesh_command(), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
def test_up_on_postgresql_migrates_books_and_audits_clean(postgres: Databases, tmp_path: Path) -> None:
    urls = {f"TRIPMESH_{name.upper()}_DATABASE_URL": postgres.empty_url(name) for name in KINDS}
    with tripmesh_up(tmp_path, extra_env=urls) as mesh:
        for name in KINDS:
            assert mesh.banner[name].data.startswith("postgresql"), mesh.output()
        client = {**mesh.env, "TRIPMESH_COORDINATOR_ADDRESS": mesh.address("coordinator")}
        address = ["--address", mesh.address("coordinator")]
        booked = run([*BOOK, "--trip-id", "pg-lisbon-1", *address], client)
        assert booked.returncode == 0, booked.stderr
        assert "CONFIRMED" in booked.stdout, booked.stdout
        sold_out = run([*SOLD_OUT, "--trip-id", "pg-vienna-1", *address], client)
        assert "CANCELLED" in sold_out.stdout and "SOLD_OUT" in sold_out.stdout, sold_out.stdout + sold_out.stderr
        listed = run(["trips", *address], client)
        assert {"pg-lisbon-1", "pg-vienna-1"} <= {line.split()[0] for line in listed.stdout.splitlines() if line}
        deadline = time.monotonic() + 10
        while not (mails := list(mesh.mail_dir.glob("*.eml"))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(mails) == 1, mesh.output()
    audited = run(["audit", "--var-dir", str(tmp_path / "nowhere")], {**mesh_base_env(mesh.env), **urls})
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "postgresql" in audited.stdout, audited.stdout
    migrated = run(["migrate", "--var-dir", str(tmp_path / "nowhere")], {**mesh_base_env(mesh.env), **urls})
    assert migrated.returncode == 0, migrated.stderr
    assert "->" not in migrated.stdout and migrated.stdout.count("nothing to do") == len(KINDS), migrated.stdout


def mesh_base_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("TRIPMESH_")}
