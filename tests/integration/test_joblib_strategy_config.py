"""The joblib strategy honours an active joblib.parallel_config, and says so."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

joblib = pytest.importorskip("joblib")

from ce_parallel import ParallelConfig, create_executor  # noqa: E402


def where(_: int) -> tuple[int, str]:
    return os.getpid(), threading.current_thread().name


def _executor(records: list[tuple[str, dict[str, Any]]]) -> Any:
    config = ParallelConfig(
        enabled=True,
        strategy="joblib",
        max_workers=2,
        telemetry=lambda e, p: records.append((e, p)),
    )
    return create_executor(config)


def test_n_jobs_one_runs_the_map_in_the_caller_and_records_why() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    with _executor(records) as ex, joblib.parallel_config(n_jobs=1):
        assert set(ex.map(where, range(20))) == {(os.getpid(), threading.current_thread().name)}
    (decision,) = [p for e, p in records if e == "decision"]
    assert (decision["decision"], decision["reason"]) == ("serial", "library_config")
    assert "n_jobs=1" in decision["detail"]


def test_a_threading_backend_runs_the_map_on_threads() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    with _executor(records) as ex, joblib.parallel_config(backend="threading", n_jobs=2):
        seen = set(ex.map(where, range(40), chunksize=1))
        assert {pid for pid, _ in seen} == {os.getpid()}
        assert all(name.startswith("ce-parallel-thread") for _, name in seen)
    (decision,) = [p for e, p in records if e == "decision"]
    assert (decision["decision"], decision["strategy"]) == ("parallel", "threads")
    assert "ThreadingBackend" in decision["detail"]


def test_outside_any_config_the_map_runs_on_joblibs_processes() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    with _executor(records) as ex:
        pids = {pid for pid, _ in ex.map(where, range(20), chunksize=1)}
        assert os.getpid() not in pids
        assert ex.metrics.fallbacks == 0
