"""The joblib strategy's memory-mapped arrays do not outlive the executor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ce_parallel import ParallelConfig, create_executor

SHM = Path("/dev/shm")


def _total_and_kind(array) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    return float(array.sum()), type(array).__name__


def _joblib_folders() -> set[str]:
    """This process's memory-map folders (other processes, such as tests run alongside, make
    and remove folders of their own at any time)."""
    ours = f"joblib_memmapping_folder_{os.getpid()}_"
    return {p.name for p in SHM.iterdir() if p.name.startswith(ours)}


@pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm, where joblib puts its memory maps")
def test_shutdown_removes_the_memory_maps_of_large_arrays() -> None:
    np = pytest.importorskip("numpy")
    before = _joblib_folders()
    # arrays above joblib's 1 MB threshold travel to the workers as memory-mapped files
    arrays = [np.full(250_000, float(i)) for i in range(4)]
    with create_executor(ParallelConfig(enabled=True, strategy="joblib", max_workers=2)) as ex:
        for _ in range(3):
            # each map memory-maps its arrays into a folder of its own, released after the map
            assert ex.map(_total_and_kind, arrays) == [(250_000.0 * i, "memmap") for i in range(4)]
    assert _joblib_folders() - before == set()


EXIT_SCRIPT = """
import os, sys
import numpy as np
from ce_parallel import ParallelConfig, ParallelFacade
# a facade's pool is shared and outlives the facade: it is shut down at exit
with ParallelFacade(ParallelConfig(enabled=True, strategy="joblib", max_workers=2)) as facade:
    assert facade.map(abs, range(-4, 4), seconds_per_item=1.0) == [4, 3, 2, 1, 0, 1, 2, 3]
    assert facade.map(np.sum, [np.ones(300_000)] * 4, seconds_per_item=1.0) == [300_000.0] * 4
    assert facade.last_decision.use_parallel, facade.last_decision
print(os.getpid())
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm, where joblib puts its memory maps")
def test_a_shared_joblib_pool_shut_down_at_exit_leaves_no_folder_and_no_traceback() -> None:
    # joblib's exit hooks for its folders run before the one that shuts shared pools down;
    # releasing a folder they had released already made loky's resource tracker print a
    # KeyError traceback at every exit
    import subprocess
    import sys

    pytest.importorskip("numpy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CE_PARALLEL")}
    env.pop("CI", None)
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, env=env, timeout=100
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    pid = done.stdout.split()[-1]
    assert not [p for p in SHM.iterdir() if p.name.startswith(f"joblib_memmapping_folder_{pid}_")]
