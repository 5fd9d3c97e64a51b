"""Invariants I1-I6 of ARCHITECTURE.md, checked by reading every database directly.

The logic is the product's audit (coordinator/audit.py, which `tripmesh audit` runs too); this wrapper
keeps the tests' historical entry point: a list of violations, empty when all hold.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator.audit import CONSERVATION, audit

__all__ = ["CONSERVATION", "check_invariants"]


async def check_invariants(coordinator: AsyncEngine, participants: Mapping[str, AsyncEngine]) -> list[str]:
    """Every violation found, as sentences; empty when I1-I6 hold."""
    return (await audit(coordinator, participants)).violations
