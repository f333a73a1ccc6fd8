"""joblib and scikit-learn code runs on ce-parallel through the "ce-parallel" joblib backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from workfns import square

joblib = pytest.importorskip("joblib")
sklearn = pytest.importorskip("sklearn")

from sklearn.datasets import make_classification  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402

from ce_parallel import (  # noqa: E402
    ConfigurationError,
    ParallelConfig,
    joblib_backend,
)
from ce_parallel.joblib_backend import (  # noqa: E402
    BACKEND_NAME,
    joblib_settings,
    shutdown_pools,
)


def _pid(_: Any = None) -> int:
    return os.getpid()


def _nested_pids(_: Any) -> list[int]:
    # a Parallel inside a task of the backend
    return list(joblib.Parallel(n_jobs=2)(joblib.delayed(_pid)(i) for i in range(2)))


@pytest.fixture
def records() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    yield seen
    shutdown_pools()


def _shutdown_joblibs_own_workers() -> None:
    # the reference runs use joblib's process-wide loky executor; later tests expect a fresh one
    from joblib.externals.loky import reusable_executor

    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)


@pytest.fixture(autouse=True)
def _release_pools(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CE_PARALLEL", raising=False)
    yield
    shutdown_pools()
    _shutdown_joblibs_own_workers()


def _backend(records: list[tuple[str, dict[str, Any]]], **params: Any) -> Any:
    config = ParallelConfig(enabled=True, telemetry=lambda e, p: records.append((e, p)))
    return joblib.parallel_config(backend=BACKEND_NAME, config=config, **params)


def _data() -> tuple[np.ndarray, np.ndarray]:
    return make_classification(n_samples=240, n_features=8, random_state=0)


def test_cross_val_score_equals_joblibs_own(records: list[tuple[str, dict[str, Any]]]) -> None:
    X, y = _data()
    model = LogisticRegression(max_iter=500)
    expected = cross_val_score(model, X, y, cv=4, n_jobs=-1)
    with _backend(records):
        got = cross_val_score(model, X, y, cv=4, n_jobs=-1)
    np.testing.assert_array_equal(got, expected)
    decisions = [p for e, p in records if e == "decision" and p["source"] == "joblib_backend"]
    runs = [p for e, p in records if e == "run"]
    assert decisions and decisions[0]["use_parallel"] is True
    assert decisions[0]["strategy"] == "processes"
    assert decisions[0]["n_jobs"] == -1
    assert runs and runs[0]["items"] == 4 and runs[0]["fallbacks"] == 0


def test_random_forest_fit_equals_joblibs_own(records: list[tuple[str, dict[str, Any]]]) -> None:
    X, y = _data()
    reference = RandomForestClassifier(n_estimators=12, n_jobs=2, random_state=0).fit(X, y)
    with _backend(records):
        forest = RandomForestClassifier(n_estimators=12, n_jobs=2, random_state=0).fit(X, y)
        predicted = forest.predict_proba(X)
    np.testing.assert_array_equal(predicted, reference.predict_proba(X))
    decisions = [p for e, p in records if e == "decision"]
    # the forest prefers threads and its predict requires shared memory: both on threads
    assert {d["strategy"] for d in decisions} == {"threads"}
    assert {d["prefer"] for d in decisions} | {d["require"] for d in decisions} >= {"threads"}


def test_any_parallel_code_runs_with_the_budget_and_records_a_run(
    records: list[tuple[str, dict[str, Any]]],
) -> None:
    with _backend(records):
        got = joblib.Parallel(n_jobs=64)(joblib.delayed(square)(i) for i in range(50))
    assert got == [i * i for i in range(50)]
    (decision,) = [p for e, p in records if e == "decision"]
    assert decision["workers"] <= decision["cpu_budget"]
    if decision["use_parallel"]:
        assert "capped at the CPU budget" in decision["detail"]
        (run,) = [p for e, p in records if e == "run"]
        assert run["items"] == 50


def test_kill_switch_runs_everything_serially_in_the_callers_process(
    records: list[tuple[str, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CE_PARALLEL", "off")
    X, y = _data()
    with _backend(records):
        pids = joblib.Parallel(n_jobs=-1)(joblib.delayed(_pid)(i) for i in range(6))
        scores = cross_val_score(LogisticRegression(max_iter=500), X, y, cv=3, n_jobs=-1)
    assert set(pids) == {os.getpid()}
    assert len(scores) == 3
    decisions = [p for e, p in records if e == "decision"]
    assert decisions and all(d["reason"] == "operator_off" for d in decisions)
    assert not [p for e, p in records if e == "run"]


def test_n_jobs_one_and_none_are_serial(records: list[tuple[str, dict[str, Any]]]) -> None:
    with _backend(records):
        assert set(joblib.Parallel(n_jobs=1)(joblib.delayed(_pid)(i) for i in range(3))) == {
            os.getpid()
        }
        assert set(joblib.Parallel()(joblib.delayed(_pid)(i) for i in range(3))) == {os.getpid()}
    assert {p["reason"] for e, p in records if e == "decision"} == {"disabled"}


def test_n_jobs_zero_is_an_error(records: list[tuple[str, dict[str, Any]]]) -> None:
    with _backend(records), pytest.raises(ValueError, match="n_jobs"):
        joblib.Parallel(n_jobs=0)(joblib.delayed(square)(i) for i in range(3))


def test_a_parallel_inside_a_task_runs_serially(records: list[tuple[str, dict[str, Any]]]) -> None:
    with _backend(records, strategy="processes"):
        outer = joblib.Parallel(n_jobs=2)(joblib.delayed(_nested_pids)(i) for i in range(2))
    for inner in outer:
        assert len(set(inner)) == 1  # each task's inner Parallel ran in the task's own process
    assert all(inner[0] != os.getpid() for inner in outer)


def test_user_errors_propagate_with_their_type(records: list[tuple[str, dict[str, Any]]]) -> None:
    def fail(i: int) -> int:
        if i == 3:
            raise KeyError("three")
        return i

    with _backend(records, strategy="threads"), pytest.raises(KeyError, match="three"):
        joblib.Parallel(n_jobs=2)(joblib.delayed(fail)(i) for i in range(8))


# -- an active parallel_config, as the joblib strategy would read it ----------------------------


def test_joblib_settings_outside_any_context_keep_the_strategy() -> None:
    settings = joblib_settings(budget=4)
    assert settings.strategy is None and settings.workers is None


def test_joblib_settings_n_jobs_one_means_serial() -> None:
    with joblib.parallel_config(n_jobs=1):
        assert joblib_settings(budget=4).strategy == "sequential"
    with joblib.parallel_config(backend="sequential"):
        assert joblib_settings(budget=4).strategy == "sequential"


def test_joblib_settings_threading_means_threads() -> None:
    with joblib.parallel_config(backend="threading", n_jobs=3):
        settings = joblib_settings(budget=4)
    assert settings.strategy == "threads" and settings.workers == 3
    assert "ThreadingBackend" in settings.detail


def test_joblib_settings_resolve_n_jobs_on_the_budget() -> None:
    with joblib.parallel_config(backend="loky", n_jobs=-2):
        settings = joblib_settings(budget=4)
    assert settings.strategy is None and settings.workers == 3
    with joblib.parallel_config(n_jobs=0), pytest.raises(ConfigurationError):
        joblib_settings(budget=4)


def test_the_module_registers_the_backend() -> None:
    from joblib.parallel import BACKENDS

    assert BACKENDS[BACKEND_NAME] is joblib_backend.CeParallelBackend
