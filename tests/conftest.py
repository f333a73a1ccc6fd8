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


@pytest.fixture(autouse=True)
def _no_shared_pools_between_tests() -> Iterator[None]:
    """Facades share pools process-wide; each test's idle ones are released after it."""
    yield
    from ce_parallel import release_shared_pools

    release_shared_pools()
