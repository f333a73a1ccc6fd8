"""The real calibrated-explanations package, explaining through ce-parallel's drop-in executor.

The reference for every comparison is calibrated-explanations' own executor running the same
instance chunks serially: the package's instance-parallel plugins take some values
(``sampled_values``, ``binned``) from the chunk a row is explained in, so explanations are
compared for the same ``instance_chunk_size``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import threading
import time
import warnings
from typing import Any

import pytest

EXTRA = "needs the ce extra (pip install 'ce-parallel[ce]'): calibrated-explanations, scikit-learn"
pytest.importorskip("calibrated_explanations", reason=EXTRA)
pytest.importorskip("sklearn", reason=EXTRA)

import numpy as np  # noqa: E402
from calibrated_explanations import CalibratedExplainer  # noqa: E402
from calibrated_explanations.parallel import ParallelConfig as TheirConfig  # noqa: E402
from calibrated_explanations.parallel import ParallelExecutor as TheirExecutor  # noqa: E402
from leakcheck import worker_children  # noqa: E402

from ce_parallel.compat.calibrated_explanations import (  # noqa: E402
    ParallelConfig,
    ParallelExecutor,
)
from ce_parallel.costs import MEMORY, Measurement  # noqa: E402
from ce_parallel.errors import ConfigurationError  # noqa: E402
from ce_parallel.resources import CpuBudget, Resources  # noqa: E402

ROWS = 40
CHUNK_ROWS = 10  # four instance tasks, so every strategy really splits the work
TREES = 10
FEATURES = 10  # the first ten of the thirty columns keep each explain call short
PLUGINS = {
    "factual_plugin": "core.explanation.factual.instance_parallel",
    "alternative_plugin": "core.explanation.alternative.instance_parallel",
}
#: How long the killer thread waits for a worker to start on a chunk before giving up.
KILL_WAIT_S = 30.0
#: CPU seconds a worker must have spent past its idle baseline to count as mid-chunk.
BUSY_CPU_S = 0.02


@dataclasses.dataclass
class Data:
    model: Any
    x_cal: Any
    y_cal: Any
    x_test: Any


@pytest.fixture(scope="module")
def data() -> Data:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x = x[:, :FEATURES]
    x_rest, x_test, y_rest, _ = train_test_split(x, y, test_size=ROWS, random_state=0)
    x_fit, x_cal, y_fit, y_cal = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0)
    model = RandomForestClassifier(n_estimators=TREES, random_state=0).fit(x_fit, y_fit)
    return Data(model, x_cal, y_cal, x_test)


def explainer(data: Data, executor: Any) -> CalibratedExplainer:
    return CalibratedExplainer(
        data.model, data.x_cal, data.y_cal, mode="classification", perf_parallel=executor, **PLUGINS
    )


def values(explanations: Any) -> list[tuple[Any, ...]]:
    """Every number and rule of every explanation (the batch-wide probability table aside)."""
    out = []
    for item in explanations.explanations:
        prediction = {k: v for k, v in item.prediction.items() if k != "__full_probabilities__"}
        out.append(
            (item.feature_weights, item.feature_predict, prediction, item.rules, item.binned)
        )
    return out


def explain_both(data: Data, target: CalibratedExplainer) -> tuple[list[Any], list[Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            values(target.explain_factual(data.x_test)),
            values(target.explore_alternatives(data.x_test)),
        )


@pytest.fixture(scope="module")
def reference(data: Data) -> tuple[list[Any], list[Any]]:
    """calibrated-explanations' own executor, the same chunks, run one after another."""
    theirs = TheirExecutor(
        TheirConfig(enabled=True, strategy="sequential", instance_chunk_size=CHUNK_ROWS)
    )
    return explain_both(data, explainer(data, theirs))


#: A 2-CPU machine whose pools start for free: the small explain calls of these tests then
#: clearly pay for a pool, whatever this machine's real start-up costs are.
FREE_STARTS = Resources(
    budget=CpuBudget(2, "affinity", {"affinity": 2}),
    thread_start_s=0.0,
    process_start_s=0.0,
    spawn_cost_s=0.0,
)


@pytest.fixture(autouse=True)
def _operator_allows_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    # the adapter goes through the facade's gate: processes need the full matrix, and CI
    # (where these tests also run) stays serial unless the operator forces parallel work
    monkeypatch.setenv("CE_PARALLEL_FULL", "1")
    monkeypatch.setenv("CE_PARALLEL", "on")
    for name in ("CE_PARALLEL_TELEMETRY", "CE_PARALLEL_DASK_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def executor_for(strategy: str, **settings: Any) -> ParallelExecutor:
    return ParallelExecutor(
        ParallelConfig(enabled=True, strategy=strategy, instance_chunk_size=CHUNK_ROWS, **settings),
        resources=FREE_STARTS,
    )


def slow_abs(x: int) -> int:
    """abs, whose cost the tests inject as remembered (50 ms an item): worth a pool."""
    return abs(x)


def remember_slow_abs() -> None:
    MEMORY.remember_fn(slow_abs, Measurement(per_item_s=0.05, holds_gil=False))


@pytest.mark.parametrize("strategy", ["sequential", "threads", "processes", "joblib"])
def test_explanations_equal_the_serial_run_on_every_strategy(
    data: Data, reference: tuple[list[Any], list[Any]], strategy: str
) -> None:
    executor = executor_for(strategy)
    try:
        factual, alternatives = explain_both(data, explainer(data, executor))
        np.testing.assert_equal(factual, reference[0])
        np.testing.assert_equal(alternatives, reference[1])
        assert len(factual) == len(alternatives) == ROWS
        # the work went through our executor: one map per explain call, four tasks each
        snapshot = executor.metrics.snapshot()
        assert snapshot["maps"] == 2
        assert snapshot["tasks_completed"] == 2 * (ROWS // CHUNK_ROWS)
        if strategy == "sequential":
            assert executor.executor is None
            assert executor.last_decision.reason == "disabled"
        else:
            assert executor.executor is not None and executor.executor.name == strategy
            assert executor.last_decision.use_parallel
        assert snapshot["fallbacks"] == 0
    finally:
        executor.shutdown()


def test_the_pool_survives_across_explain_calls(data: Data) -> None:
    # processes other tests of the session keep (a shared dask cluster) are not this pool's
    before = {p.pid for p in worker_children()}
    executor = executor_for("processes")
    target = explainer(data, executor)
    try:
        seen = []
        for _ in range(3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                target.explain_factual(data.x_test)
            backend = executor.executor
            assert backend is not None
            seen.append((backend, backend._pool, {p.pid for p in worker_children()} - before))
        backends, pools, pids = zip(*seen, strict=True)
        assert len({id(b) for b in backends}) == 1
        assert len({id(p) for p in pools}) == 1 and pools[0] is not None
        assert pids[0] and pids[0] == pids[1] == pids[2]
        assert executor.metrics.snapshot()["maps"] == 3
    finally:
        executor.shutdown()
    assert executor.executor is None
    deadline = time.monotonic() + 10
    while {p.pid for p in worker_children()} - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {p.pid for p in worker_children()} - before == set()


def _kill_a_busy_worker(killed: list[int], stop: threading.Event, spare: set[int]) -> None:
    """Kill the first worker seen running a chunk (its CPU time grows past its idle baseline)."""
    import psutil

    baseline: dict[int, float] = {}
    deadline = time.monotonic() + KILL_WAIT_S
    while not stop.is_set() and time.monotonic() < deadline:
        for child in worker_children():
            if child.pid in spare:
                continue
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system
            if used - baseline.setdefault(child.pid, used) >= BUSY_CPU_S:
                os.kill(child.pid, signal.SIGKILL)
                killed.append(child.pid)
                return
        time.sleep(0.005)


def test_a_worker_killed_mid_explain_falls_back_to_identical_explanations(
    data: Data, reference: tuple[list[Any], list[Any]]
) -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    # processes other tests of the session keep (a shared dask cluster) are never killed
    spare = {p.pid for p in worker_children()}
    executor = executor_for("processes", telemetry=lambda event, rec: records.append((event, rec)))
    target = explainer(data, executor)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target.explain_factual(data.x_test)  # starts the pool, so the kill lands mid-map
        # and its workers have loaded the explainer: a kill then hits a chunk, not a warm-up
        core = executor.executor
        assert core is not None, "the first call did not run on the pool"
        assert core.wait_until_warm(60)
        killed: list[int] = []
        stop = threading.Event()
        killer = threading.Thread(target=_kill_a_busy_worker, args=(killed, stop, spare))
        killer.start()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                factual = values(target.explain_factual(data.x_test))
        finally:
            stop.set()
            killer.join()
        assert killed, "no worker was seen running a chunk"
        np.testing.assert_equal(factual, reference[0])
        assert executor.metrics.fallbacks >= 1
        assert any(event == "fallback" for event, _ in records)
        # calibrated-explanations sees the fallback and makes it visible to its user
        assert any("fell back to sequential" in str(w.message) for w in caught)
        # the next call starts a fresh pool and runs in parallel again
        _, alternatives = explain_both(data, target)
        np.testing.assert_equal(alternatives, reference[1])
        assert executor.active_strategy_name == "processes"
    finally:
        executor.shutdown()


def test_the_executor_pickles_without_its_pool(data: Data) -> None:
    executor = executor_for("threads")
    remember_slow_abs()
    try:
        assert executor.map(slow_abs, range(-20, 0)) == list(range(20, 0, -1))
        live = executor.executor
        assert live is not None
        clone = pickle.loads(pickle.dumps(executor))
        assert clone.executor is None
        assert clone.config == executor.config
        assert clone.metrics.snapshot()["maps"] == executor.metrics.snapshot()["maps"] == 1
        assert clone.map(slow_abs, range(-20, 0)) == list(range(20, 0, -1))
        assert executor.executor is live  # pickling did not touch the original's pool
        # and an explainer carrying it pickles too (calibrated-explanations drops the executor)
        assert pickle.loads(pickle.dumps(explainer(data, executor))) is not None
        clone.shutdown()
    finally:
        executor.shutdown()


def test_entering_twice_is_safe_and_an_error_cancels_the_pool() -> None:
    executor = executor_for("threads")
    remember_slow_abs()
    with executor, executor:
        assert executor.active_strategy_name == "threads"
        executor.map(slow_abs, range(-20, 0))
    assert executor.executor is not None  # kept for the next explain call
    with pytest.raises(KeyError), executor:
        raise KeyError("boom")
    assert executor.executor is None and executor.active_strategy_name is None
    assert executor.map(slow_abs, range(-20, 0)) == list(range(20, 0, -1))
    executor.shutdown()


def test_small_or_disabled_work_stays_in_the_caller() -> None:
    records: list[tuple[str, dict[str, Any]]] = []
    executor = ParallelExecutor(
        ParallelConfig(
            enabled=True, strategy="processes", telemetry=lambda e, r: records.append((e, r))
        )
    )
    # below min_instances_for_parallel (the row chunk, 100 by default): no pool is started
    assert executor.map(abs, [-1, -2, -3], work_items=50) == [1, 2, 3]
    assert executor.executor is None
    (decision,) = [r for e, r in records if e == "decision"]
    # one record schema whatever the front door: the facade's decision record
    assert (decision["reason"], decision["decision"]) == ("below_min_instances", "serial")
    disabled = ParallelExecutor(ParallelConfig(strategy="processes"))
    assert disabled.map(abs, [-1, -2]) == [1, 2] and disabled.executor is None


_TWO_AT_ONCE = threading.Barrier(2)


def _row_task(x: int) -> tuple[int, str]:
    # a task of rows that only finishes once another runs beside it: one worker alone times out
    _TWO_AT_ONCE.wait(timeout=20)
    return x, threading.current_thread().name


def test_the_row_tasks_of_a_default_config_spread_over_the_workers() -> None:
    # instance_chunk_size is rows per task (100 by default); the tasks the adapter maps are not
    # bundled into chunks of that many items, which ran every task on one worker
    executor = ParallelExecutor(
        ParallelConfig(enabled=True, strategy="threads"), resources=FREE_STARTS
    )
    assert executor.config.instance_chunk_size == 100  # what calibrated-explanations reads
    MEMORY.remember_fn(_row_task, Measurement(per_item_s=0.05, holds_gil=False))
    try:
        _TWO_AT_ONCE.reset()
        out = executor.map(_row_task, range(4), work_items=400)
        assert [x for x, _ in out] == [0, 1, 2, 3]
        assert executor.last_decision.use_parallel
        assert len({name for _, name in out}) == 2
        assert all(name.startswith("ce-parallel-thread") for _, name in out)
        assert executor.metrics.fallbacks == 0 and executor.metrics.chunks >= 2
    finally:
        executor.shutdown()


@pytest.mark.parametrize("strategy", ["threads", "processes", "joblib"])
def test_the_operator_kill_switch_holds_for_the_adapter(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    monkeypatch.setenv("CE_PARALLEL", "off")
    executor = executor_for(strategy)
    remember_slow_abs()
    try:
        where = executor.map(_where, range(40), work_items=4000)
        assert set(where) == {(os.getpid(), threading.current_thread().name)}
        assert executor.executor is None
        assert executor.last_decision.reason == "operator_off"
    finally:
        executor.shutdown()


def test_without_the_full_matrix_processes_run_on_the_conservative_substitute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ce_parallel import FullMatrixWarning

    monkeypatch.delenv("CE_PARALLEL_FULL")
    executor = executor_for("processes")
    remember_slow_abs()
    try:
        with pytest.warns(FullMatrixWarning):
            assert executor.map(slow_abs, range(-20, 0)) == list(range(20, 0, -1))
        assert executor.last_decision.reason == "full_matrix_disabled"
        assert executor.executor is not None and executor.executor.name == "joblib"
    finally:
        executor.shutdown()


def test_in_ci_the_adapter_stays_serial_unless_the_operator_forces_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ci = dataclasses.replace(FREE_STARTS, ci=True, ci_provider="generic")
    monkeypatch.delenv("CE_PARALLEL")
    config = ParallelConfig(enabled=True, strategy="threads", instance_chunk_size=CHUNK_ROWS)
    remember_slow_abs()
    quiet = ParallelExecutor(config, resources=ci)
    assert quiet.map(slow_abs, range(-20, 0)) == list(range(20, 0, -1))
    assert quiet.last_decision.reason == "ci_environment"
    monkeypatch.setenv("CE_PARALLEL", "on")
    remember_slow_abs()  # the serial run above measured the real (tiny) cost: inject it again
    forced = ParallelExecutor(config, resources=ci)
    try:
        forced.map(slow_abs, range(-20, 0))
        assert forced.last_decision.use_parallel
    finally:
        forced.shutdown()


def _where(_: int) -> tuple[int, str]:
    import threading

    return os.getpid(), threading.current_thread().name


def test_config_matches_calibrated_explanations_field_for_field() -> None:
    theirs = dataclasses.fields(TheirConfig)
    ours = dataclasses.fields(ParallelConfig)[: len(theirs)]
    assert [f.name for f in ours] == [f.name for f in theirs]
    assert [f.default for f in ours] == [f.default for f in theirs]
    with pytest.raises(ConfigurationError, match="granularity"):
        ParallelConfig(granularity="feature")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_workers"):
        ParallelConfig(max_workers=0)
    # an existing calibrated-explanations config is accepted as it is
    executor = ParallelExecutor(TheirConfig(enabled=True, strategy="threads", max_workers=2))
    assert executor.config.strategy == "threads" and executor.config.max_workers == 2
    # unset instance_chunk_size resolves to rows that amortise a task's set-up
    assert executor.config.instance_chunk_size is not None
    assert executor.config.instance_chunk_size > TheirConfig().min_batch_size


def test_from_env_reads_both_grammars() -> None:
    environ = {"CE_PARALLEL": "processes,workers=2,feature_chunk=4,force_serial=on"}
    config = ParallelConfig.from_env(environ=environ)
    assert (config.enabled, config.strategy, config.max_workers) == (True, "processes", 2)
    assert config.feature_chunk_size == 4 and config.force_serial_on_failure is True
    with pytest.raises(ConfigurationError, match="granularity"):
        ParallelConfig.from_env(environ={"CE_PARALLEL": "granularity=feature"})
    with pytest.raises(ConfigurationError, match="bogus"):
        ParallelConfig.from_env(environ={"CE_PARALLEL": "bogus"})


def test_the_example_runs_and_finds_identical_explanations(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import runpy
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "calibrated_explanations_parallel.py"
    example = runpy.run_path(str(path))
    example["main"](["--quick", "--strategy", "threads"])
    out = capsys.readouterr().out
    assert "explanations identical: yes (40 factual, 40 alternative)" in out
