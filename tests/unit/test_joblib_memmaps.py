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
