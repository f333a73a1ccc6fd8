"""Inside real process workers: numeric libraries are capped and nested maps run serially."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ce_parallel import ParallelConfig, create_executor
from ce_parallel.resources import CpuBudget, Resources


def blas_threads(_: Any) -> list[tuple[str, int]]:
    """(library, threads) of every numeric thread pool loaded in this worker."""
    import numpy as np
    from threadpoolctl import threadpool_info

    np.ones((64, 64)) @ np.ones((64, 64))  # make sure BLAS is loaded and initialised
    return [(info["internal_api"], info["num_threads"]) for info in threadpool_info()]


def pid_of(_: Any) -> int:
    return os.getpid()


def nested_map(telemetry_path: str) -> tuple[int, list[int], bool]:
    """Run a process map from inside a worker; report our pid, the inner pids, in_worker()."""
    from ce_parallel import in_worker

    config = ParallelConfig(strategy="processes", telemetry_path=telemetry_path)
    with create_executor(config, max_workers=2) as inner:
        pids = inner.map(pid_of, range(6))
    return os.getpid(), pids, in_worker()


def resources(cpus: int) -> Resources:
    return Resources(budget=CpuBudget(cpus, "affinity", {"affinity": cpus}))


def test_process_workers_cap_blas_threads_to_fit_the_budget() -> None:
    pytest.importorskip("numpy")
    import subprocess
    import sys

    # Without a cap, a fresh interpreter on this budget would use more than one BLAS thread
    # (otherwise this test could not fail).
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_NUM_THREADS", "_THREADS"))}
    code = "from test_worker_caps import blas_threads; print(max(t for _, t in blas_threads(0)))"
    here = str(Path(__file__).parent)
    plain = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=here
    )
    if plain.returncode != 0 or int(plain.stdout.strip() or 0) < 2:
        pytest.skip("numpy uses one BLAS thread here even without a cap")
    config = ParallelConfig(strategy="processes", fallback="raise")
    with create_executor(config, max_workers=2, resources=resources(4)) as executor:
        reports = executor.map(blas_threads, range(4), chunksize=1)
    pools = [pool for report in reports for pool in report]
    assert pools, "numpy loaded no numeric thread pool that threadpoolctl can see"
    # max_workers=2 caps the budget at 2, so each of the 2 workers gets 2 // 2 = 1 thread
    assert {threads for _, threads in pools} == {1}


def test_process_workers_set_the_numeric_thread_variables() -> None:
    config = ParallelConfig(strategy="processes", fallback="raise")
    with create_executor(config, max_workers=2, resources=resources(2)) as executor:
        env = executor.map(_thread_variables, range(2))
    assert all(value == {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"} for value in env)


def _thread_variables(_: Any) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def test_a_map_inside_a_process_worker_runs_serially_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "telemetry.jsonl"
    config = ParallelConfig(strategy="processes", fallback="raise")
    with create_executor(config, max_workers=2) as executor:
        outer = executor.map(nested_map, [str(log)] * 2, chunksize=1)
    for worker_pid, inner_pids, inside in outer:
        assert worker_pid != os.getpid()
        assert inside is True
        assert inner_pids == [worker_pid] * 6  # no pool in a pool: all ran in the worker
    records = [json.loads(line) for line in log.read_text().splitlines()]
    nested = [r for r in records if r["event"] == "nested"]
    assert len(nested) == 2 and all(r["items"] == 6 for r in nested)
