"""joblib's workers report to joblib's resource tracker, whichever copy of loky came last.

joblib vendors its own loky, and the loky package (the processes strategy's pool) registers its
start method under the same name; joblib's executor, started with the other copy, gets workers
that release joblib's memory maps into a resource tracker of their own, which prints a
``KeyError`` traceback per file and leaves the files to the parent until exit. Each scenario runs
in a fresh interpreter, where the import order is what the scenario says.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("numpy")
pytest.importorskip("joblib")
pytest.importorskip("loky")

PRELUDE = """
import multiprocessing.context, os
import numpy as np
from joblib import Parallel, delayed
from ce_parallel import ParallelConfig, create_executor

def total(a):
    return float(a.sum())

def config(strategy):
    return ParallelConfig(enabled=True, strategy=strategy, full_matrix=True, max_workers=2)

# 2 MB each: above joblib's 1 MB threshold, so they travel as memory-mapped files
arrays = [np.full(250_000, float(i)) for i in range(4)]
expected = [250_000.0 * i for i in range(4)]
"""

SCENARIOS = {
    "processes strategy, then joblib.Parallel": """
with create_executor(config("processes")) as ex:
    assert ex.map(total, arrays) == expected
for _ in range(2):
    assert Parallel(n_jobs=2)(delayed(total)(a) for a in arrays) == expected
""",
    "loky imported after joblib, then the joblib strategy": """
import loky  # a user's own import: loky now owns the "loky" start method
with create_executor(config("joblib")) as ex:
    for _ in range(2):
        assert ex.map(total, arrays) == expected
""",
    "processes and joblib strategies side by side": """
with create_executor(config("processes")) as p, create_executor(config("joblib")) as j:
    for _ in range(2):
        assert p.map(total, arrays) == expected
        assert j.map(total, arrays) == expected
""",
}


def _our_folders(pid: int) -> list[str]:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    return [p.name for p in shm.iterdir() if p.name.startswith(f"joblib_memmapping_folder_{pid}_")]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_resource_tracker_errors(scenario: str) -> None:
    code = PRELUDE + textwrap.dedent(SCENARIOS[scenario]) + "\nprint(os.getpid())\n"
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240
    )
    assert done.returncode == 0, done.stderr
    assert "resource_tracker" not in done.stderr, done.stderr
    assert "KeyError" not in done.stderr, done.stderr
    assert _our_folders(int(done.stdout.split()[-1])) == []
