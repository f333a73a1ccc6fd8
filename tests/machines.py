"""Fake machines for tests that decide: a ``Resources`` with no CI, whatever runs the tests.

Under ``CI=true`` the CI rule comes first in the gate; a test of any later rule injects one of
these (and ``environ={}``) so that it decides the same way on a laptop and in CI.
"""

from __future__ import annotations

from ce_parallel.resources import CpuBudget, Resources


def fake_machine(
    cpus: int = 4,
    *,
    limited_by: str = "machine",
    ci: bool = False,
    spawn_cost_s: float = 0.01,
    process_start_s: float = 0.2,
    thread_start_s: float = 0.001,
) -> Resources:
    """A Linux machine of ``cpus`` CPUs with fork, given start costs, and CI only if asked."""
    return Resources(
        budget=CpuBudget(cpus, limited_by, {limited_by: cpus}),
        ci=ci,
        ci_provider="github" if ci else None,
        platform="linux",
        start_method="fork",
        spawn_cost_s=spawn_cost_s,
        process_start_s=process_start_s,
        thread_start_s=thread_start_s,
    )
