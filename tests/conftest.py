"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from leakcheck import no_leaks

__all__ = ["no_leaks"]


@pytest.fixture(autouse=True)
def _fresh_cost_memory() -> Iterator[None]:
    """Every test starts with nothing measured: decisions depend only on what it injects."""
    from ce_parallel.costs import MEMORY

    MEMORY.clear()
    yield
    MEMORY.clear()
