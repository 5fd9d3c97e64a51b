"""The chaos seed in the report header (to replay a run: TRIPMESH_CHAOS_SEED=<seed>), the counts at the end."""

from __future__ import annotations

import pytest

from tests.support.chaos import REPORT, SEED_VAR, chaos_seed


def pytest_report_header() -> str:
    return f"chaos: {SEED_VAR}={chaos_seed()}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("chaos report")
        for line in REPORT:
            terminalreporter.write_line(line)
