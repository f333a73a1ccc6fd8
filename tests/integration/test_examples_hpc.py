"""The HPC examples run in their --local mode and leave results and telemetry where asked.

Every run has a temporary working directory, so nothing lands in the source tree.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "hpc"
#: The local sweep: 4 models x 2 calibration methods x 1 seed.
LOCAL_SETTINGS = 8
#: Generous: the examples start worker processes that import scikit-learn.
RUN_TIMEOUT_S = 120


def _environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CE_PARALLEL", "SLURM_"))}
    env.update(PYTHON=sys.executable, OUT_DIR=str(tmp_path), **extra)
    return env


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.timeout(RUN_TIMEOUT_S + 10)
def test_sbatch_calibration_sweep_runs_locally_on_processes(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    done = subprocess.run(
        ["bash", str(EXAMPLES / "sbatch_calibration_sweep.sh"), "--local"],
        env=_environ(tmp_path),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rows = _rows(tmp_path / "calibration-sweep-local.csv")
    assert len(rows) == LOCAL_SETTINGS
    assert all(0.0 <= float(row["ece"]) <= 1.0 for row in rows)
    records = _records(tmp_path / "telemetry-local.jsonl")
    (decision,) = [r for r in records if r["event"] == "decision"]
    # the script's defaults: on, processes, full matrix; the decision says what ran and why
    assert decision["requested_strategy"] == "processes"
    assert decision["full_matrix"] is True
    if decision["decision"] == "parallel":
        (run,) = [r for r in records if r["event"] == "run"]
        assert (run["strategy"], run["items"], run["fallbacks"]) == ("processes", 7, 0)
    assert "decision:" in done.stdout


@pytest.mark.timeout(RUN_TIMEOUT_S + 10)
def test_operator_off_switch_wins_over_the_job_script(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "calibration_sweep.py"),
            "--local",
            "--out",
            str(tmp_path / "sweep.csv"),
        ],
        env=_environ(tmp_path, CE_PARALLEL="off", CE_PARALLEL_TELEMETRY=str(tmp_path / "t.jsonl")),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert len(_rows(tmp_path / "sweep.csv")) == LOCAL_SETTINGS
    (decision,) = [r for r in _records(tmp_path / "t.jsonl") if r["event"] == "decision"]
    assert (decision["decision"], decision["reason"]) == ("serial", "operator_off")


@pytest.mark.timeout(RUN_TIMEOUT_S + 10)
def test_local_sweep_as_the_readme_runs_it_warns_nothing_and_writes_outside_cwd(
    tmp_path: Path,
) -> None:
    pytest.importorskip("sklearn")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = _environ(tmp_path)
    del env["OUT_DIR"]
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "calibration_sweep.py"), "--local"],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    # the script asks for processes itself: it opts in to the full matrix, so no warning
    assert "Warning" not in done.stderr, done.stderr
    match = re.search(r"results in (\S+)$", done.stdout, re.MULTILINE)
    assert match, done.stdout
    out = Path(match.group(1))
    assert out.parent.parent == tmp_path / "tmp"  # a new temporary folder
    assert len(_rows(out)) == LOCAL_SETTINGS
    assert list(cwd.iterdir()) == []


@pytest.mark.dask
@pytest.mark.timeout(RUN_TIMEOUT_S + 10)
def test_dask_jobqueue_example_runs_locally_on_a_local_cluster(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("distributed")
    telemetry = tmp_path / "dask.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "dask_jobqueue_slurm.py"),
            "--local",
            "--out",
            str(tmp_path / "dask.csv"),
        ],
        env=_environ(tmp_path, CE_PARALLEL_TELEMETRY=str(telemetry)),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=tmp_path,  # the example finds its sibling module by its own path, not the cwd
    )
    # dask-jobqueue is not a dependency: where it is missing, success shows --local skips it
    assert done.returncode == 0, done.stderr
    assert len(_rows(tmp_path / "dask.csv")) == LOCAL_SETTINGS
    (run,) = [r for r in _records(telemetry) if r["event"] == "run"]
    assert (run["strategy"], run["items"], run["workers"], run["fallbacks"]) == ("dask", 8, 2, 0)
