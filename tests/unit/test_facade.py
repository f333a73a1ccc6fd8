"""ParallelFacade decisions against injected resources and environments, and facade.map."""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from machines import fake_machine

from ce_parallel import ParallelConfig, heuristics
from ce_parallel.callers import EXTERNAL
from ce_parallel.decision import FullMatrixWarning, ParallelDecision
from ce_parallel.errors import ConfigurationError
from ce_parallel.facade import ParallelFacade, full_matrix_strategies
from ce_parallel.gate import REASONS
from ce_parallel.registry import conservative_strategies
from ce_parallel.resources import Resources
from ce_parallel.strategies.serial import SerialExecutor
from ce_parallel.strategies.threads import ThreadExecutor
from ce_parallel.worker import ChunkJob, run_chunk

CONSERVATIVE_STRATEGIES = conservative_strategies()
FULL_MATRIX_STRATEGIES = full_matrix_strategies()

# Enough work that every rule lets a thread or joblib pool through on 4 CPUs:
# 5000 x 10 x FACADE_SECONDS_PER_WORK_ITEM = 25 s of estimated work.
BIG = (5000, 10)
THREADS = ParallelConfig(enabled=True, strategy="threads")
JOBLIB = ParallelConfig(enabled=True, strategy="joblib")


def enabled(strategy: Any, **changes: Any) -> ParallelConfig:
    """An enabled config for ``strategy`` (any name the config accepts)."""
    return ParallelConfig(enabled=True, strategy=strategy, **changes)


machine = fake_machine


def facade(
    config: ParallelConfig | None = None,
    environ: Mapping[str, str] | None = None,
    resources: Resources | None = None,
    **kwargs: Any,
) -> ParallelFacade:
    return ParallelFacade(
        config,
        environ={} if environ is None else environ,
        resources=machine() if resources is None else resources,
        **kwargs,
    )


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        self.records.append((event, payload))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [p for e, p in self.records if e == name]


class SpyExecutor:
    """An executor-like object (calibrated-explanations' shape): ``config`` and ``map``."""

    class _Config:
        def __init__(self, enabled: bool, strategy: str, max_workers: int | None) -> None:
            self.enabled = enabled
            self.strategy = strategy
            self.max_workers = max_workers

    def __init__(
        self, enabled: bool = True, strategy: str = "threads", max_workers: int | None = 2
    ) -> None:
        self.config = self._Config(enabled, strategy, max_workers)
        self.calls = 0

    def map(self, fn: Callable[..., Any], items: Iterable[Any], **kwargs: Any) -> list[Any]:
        self.calls += 1
        return [fn(x) for x in items]


class BrokenPool:
    """An executor-like object whose machinery fails on every map."""

    def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
        raise BrokenExecutor("pool died")


def square(x: int) -> int:
    return x * x


def noisy(x: int, rng: Any) -> float:
    return x + float(rng.random())


@pytest.fixture
def quiet() -> Iterable[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FullMatrixWarning)
        yield


def gate_warnings(record: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in record if issubclass(w.category, FullMatrixWarning)]


# -- every reason code is reachable ----------------------------------------------------------


def test_enabled() -> None:
    d = facade(THREADS).decide_use_parallel(*BIG)
    assert (d.use_parallel, d.decision, d.reason) == (True, "parallel", "enabled")
    assert (d.strategy, d.workers, d.executor_type) == ("threads", 4, "ThreadExecutor")


def test_full_matrix_disabled_runs_the_substitute(quiet: None) -> None:
    d = facade(ParallelConfig(enabled=True, strategy="processes")).decide_use_parallel(*BIG)
    assert (d.use_parallel, d.reason) == (True, "full_matrix_disabled")
    assert d.strategy == heuristics.FULL_MATRIX_SUBSTITUTE
    assert d.requested_strategy == "processes"
    assert d.executor_type == "JoblibExecutor"


def test_operator_off() -> None:
    d = facade(THREADS, {"CE_PARALLEL": "off"}).decide_use_parallel(*BIG)
    assert (d.use_parallel, d.decision, d.reason) == (False, "serial", "operator_off")
    assert (d.strategy, d.workers, d.executor_type) == ("sequential", 1, "SerialExecutor")


def test_nested_worker_from_the_environment_of_a_process_worker() -> None:
    d = facade(THREADS, {"CEPARALLEL_IN_WORKER": "1"}).decide_use_parallel(*BIG)
    assert d.reason == "nested_worker"


def test_nested_worker_inside_a_chunk_run_by_our_worker_code() -> None:
    f = facade(THREADS)
    outcome = run_chunk(
        ChunkJob(fn=lambda n: f.decide_use_parallel(n, 10).reason, start=0, items=[5000])
    )
    assert outcome.results == ["nested_worker"]
    # outside the worker the same question gets the ordinary answer
    assert f.decide_use_parallel(*BIG).reason == "enabled"


def test_nested_map_inside_a_thread_worker_runs_serially() -> None:
    with facade(THREADS) as f:

        def inner(n: int) -> tuple[str, list[int]]:
            out = f.map(square, range(n), n_features=10)
            assert f.last_decision is not None
            return (f.decide_use_parallel(n, 10).reason, out)

        # a hint: the outer map runs no pilot items in this (non-worker) thread
        results = f.map(inner, [100] * 40, n_features=10, seconds_per_item=0.01)
    assert {reason for reason, _ in results} == {"nested_worker"}
    assert all(out == [x * x for x in range(100)] for _, out in results)


@pytest.mark.parametrize(
    "config",
    [
        ParallelConfig(),
        ParallelConfig(enabled=False, strategy="threads"),
        ParallelConfig(enabled=True, strategy="sequential"),
    ],
)
def test_disabled(config: ParallelConfig) -> None:
    assert facade(config).decide_use_parallel(*BIG).reason == "disabled"


@pytest.mark.parametrize(
    "make",
    [
        lambda: SpyExecutor(enabled=False),
        lambda: SpyExecutor(enabled=True, strategy="sequential"),
        lambda: SerialExecutor(resources=machine()),
    ],
    ids=["config-disabled", "sequential-strategy", "serial-executor"],
)
def test_executor_disabled(make: Callable[[], Any]) -> None:
    executor = make()
    d = facade(THREADS).decide_use_parallel(*BIG, executor=executor)
    assert d.reason == "executor_disabled"
    assert not d.use_parallel


def test_no_cpu_budget_names_the_limiting_source() -> None:
    d = facade(THREADS, resources=machine(1, limited_by="cgroup")).decide_use_parallel(*BIG)
    assert (d.reason, d.cpu_budget, d.cpu_limited_by) == ("no_cpu_budget", 1, "cgroup")


def test_max_workers_one_is_no_cpu_budget_limited_by_max_workers() -> None:
    d = facade(THREADS.replace(max_workers=1)).decide_use_parallel(*BIG)
    assert (d.reason, d.cpu_budget, d.cpu_limited_by) == ("no_cpu_budget", 1, "max_workers")


def test_max_workers_caps_the_workers_of_a_parallel_decision() -> None:
    d = facade(THREADS.replace(max_workers=3)).decide_use_parallel(*BIG)
    assert (d.reason, d.workers, d.cpu_budget, d.cpu_limited_by) == (
        "enabled",
        3,
        3,
        "max_workers",
    )


def test_ci_environment_and_its_explicit_override() -> None:
    ci = machine(ci=True)
    assert facade(THREADS, resources=ci).decide_use_parallel(*BIG).reason == "ci_environment"
    forced = facade(THREADS, {"CE_PARALLEL": "threads"}, resources=ci)
    d = forced.decide_use_parallel(*BIG)
    assert (d.reason, d.ci) == ("enabled", True)
    on = facade(THREADS, {"CE_PARALLEL": "on"}, resources=ci)
    assert on.decide_use_parallel(*BIG).reason == "enabled"


def test_below_min_instances_default_and_configured() -> None:
    f = facade(THREADS)
    assert f.decide_use_parallel(heuristics.FACADE_MIN_INSTANCES - 1, 100).reason == (
        "below_min_instances"
    )
    assert f.decide_use_parallel(0).reason == "below_min_instances"
    g = facade(THREADS.replace(min_instances_for_parallel=50))
    assert g.decide_use_parallel(49, 100).reason == "below_min_instances"
    assert g.decide_use_parallel(50, 100).reason == "enabled"


def test_min_batch_size_raises_the_instance_floor_when_no_threshold_is_set() -> None:
    f = facade(THREADS.replace(min_batch_size=40))
    assert f.decide_use_parallel(39, 100).reason == "below_min_instances"
    assert f.decide_use_parallel(40, 100).reason == "enabled"
    explicit = facade(THREADS.replace(min_batch_size=40, min_instances_for_parallel=10))
    assert explicit.decide_use_parallel(10, 100).reason == "enabled"


def test_repeated_decisions_are_remembered_but_recorded_every_time() -> None:
    sink = Recorder()
    f = facade(THREADS, telemetry=sink)
    first = f.decide_use_parallel(*BIG)
    second = f.decide_use_parallel(*BIG)
    # the same decision, recorded twice, each record with its own id
    assert dataclasses.replace(first, decision_id="") == dataclasses.replace(second, decision_id="")
    assert first.decision_id != second.decision_id
    assert f.last_decision is second
    assert len(sink.events("decision")) == 2
    # a bool is still refused after an equal int was decided
    f.decide_use_parallel(1)
    with pytest.raises(ConfigurationError):
        f.decide_use_parallel(True)


def test_tiny_workload_counts_instances_times_features() -> None:
    f = facade(THREADS)
    n = heuristics.FACADE_MIN_INSTANCES
    assert f.decide_use_parallel(n, 1).reason == "tiny_workload"
    assert f.decide_use_parallel(n, 2).reason == "enabled"
    g = facade(THREADS.replace(tiny_workload_threshold=1000))
    assert g.decide_use_parallel(99, 10).reason == "tiny_workload"


def test_payload_too_large_only_for_process_strategies() -> None:
    too_big = heuristics.PROCESS_MAX_TASK_BYTES + 1
    d = facade(JOBLIB).decide_use_parallel(*BIG, bytes_hint=too_big)
    assert (d.reason, d.bytes_hint) == ("payload_too_large", too_big)
    limit = heuristics.PROCESS_MAX_TASK_BYTES
    assert facade(JOBLIB).decide_use_parallel(*BIG, bytes_hint=limit).reason == "enabled"
    # threads share memory: nothing is pickled
    assert facade(THREADS).decide_use_parallel(*BIG, bytes_hint=too_big).reason == "enabled"


def test_payload_from_the_config_when_the_call_gives_none() -> None:
    config = JOBLIB.replace(task_size_hint_bytes=heuristics.PROCESS_MAX_TASK_BYTES * 2)
    assert facade(config).decide_use_parallel(*BIG).reason == "payload_too_large"


def test_spawn_cost_for_a_process_pool_but_not_for_threads() -> None:
    # 100 x 1 work items: 0.05 s of estimated work, 0.025 s saved on 2+ workers
    assert facade(JOBLIB).decide_use_parallel(100, 1).reason == "spawn_cost"
    assert facade(THREADS).decide_use_parallel(100, 1).reason == "enabled"


def test_seconds_per_item_hint_can_repay_the_spawn_cost() -> None:
    f = facade(JOBLIB)
    d = f.decide_use_parallel(100, 1, seconds_per_item=0.05)
    assert (d.reason, d.estimated_work_s, d.seconds_per_item) == ("enabled", 5.0, 0.05)


@pytest.mark.parametrize(
    "slow",
    [machine(spawn_cost_s=1000.0), machine(process_start_s=1000.0)],
    ids=["platform-start-method", "loky-start"],
)
def test_a_slow_process_start_keeps_process_strategies_serial(slow: Resources) -> None:
    assert facade(JOBLIB, resources=slow).decide_use_parallel(*BIG).reason == "spawn_cost"
    assert facade(THREADS, resources=slow).decide_use_parallel(*BIG).reason == "enabled"


def test_a_slow_thread_start_keeps_threads_serial() -> None:
    slow = machine(thread_start_s=1000.0)
    assert facade(THREADS, resources=slow).decide_use_parallel(*BIG).reason == "spawn_cost"


def test_every_reason_code_is_reached_by_the_tests_above(quiet: None) -> None:
    seen = {
        facade(THREADS).decide_use_parallel(*BIG).reason,
        facade(ParallelConfig(enabled=True, strategy="auto")).decide_use_parallel(*BIG).reason,
        facade(THREADS, {"CE_PARALLEL": "off"}).decide_use_parallel(*BIG).reason,
        facade(THREADS, {"CEPARALLEL_IN_WORKER": "1"}).decide_use_parallel(*BIG).reason,
        facade().decide_use_parallel(*BIG).reason,
        facade().decide_use_parallel(*BIG, executor=SpyExecutor(enabled=False)).reason,
        facade(THREADS, resources=machine(1)).decide_use_parallel(*BIG).reason,
        facade(THREADS, resources=machine(ci=True)).decide_use_parallel(*BIG).reason,
        facade(THREADS).decide_use_parallel(1).reason,
        facade(THREADS).decide_use_parallel(10).reason,
        facade(JOBLIB).decide_use_parallel(*BIG, bytes_hint=10**9).reason,
        facade(JOBLIB).decide_use_parallel(100).reason,
    }
    import joblib

    with joblib.parallel_config(n_jobs=1):
        seen.add(facade(JOBLIB).decide_use_parallel(*BIG).reason)
    assert seen == set(REASONS)
    assert len(REASONS) == len(set(REASONS))


# -- the kill switch and precedence ------------------------------------------------------------


@pytest.mark.parametrize("value", ["off", "0", "false", "threads,off", "off,on", "OFF"])
def test_kill_switch_beats_every_enabling_setting(value: str) -> None:
    env = {"CE_PARALLEL": value, "CE_PARALLEL_FULL": "1"}
    f = facade(THREADS.replace(full_matrix=True), env, executor=SpyExecutor())
    assert f.decide_use_parallel(*BIG).reason == "operator_off"
    spy = SpyExecutor()
    d = f.decide_use_parallel(*BIG, executor=spy, seconds_per_item=10.0)
    assert d.reason == "operator_off"
    assert f.map(square, range(100), executor=spy, n_features=100) == [x * x for x in range(100)]
    assert spy.calls == 0
    assert f.last_decision is not None and f.last_decision.reason == "operator_off"


def test_ce_parallel_overrides_the_config_object() -> None:
    f = facade(THREADS, {"CE_PARALLEL": "joblib,workers=2,min_instances=50"})
    assert f.config.strategy == "joblib"
    d = f.decide_use_parallel(40, 1000)
    assert (d.reason, d.requested_strategy) == ("below_min_instances", "joblib")
    d = f.decide_use_parallel(*BIG)
    assert (d.strategy, d.workers, d.cpu_limited_by) == ("joblib", 2, "max_workers")


def test_ce_parallel_enables_a_disabled_config() -> None:
    d = facade(ParallelConfig(), {"CE_PARALLEL": "threads"}).decide_use_parallel(*BIG)
    assert (d.reason, d.strategy) == ("enabled", "threads")


def test_per_call_bytes_hint_overrides_ce_parallel_task_bytes() -> None:
    env = {"CE_PARALLEL": f"joblib,task_bytes={heuristics.PROCESS_MAX_TASK_BYTES * 4}"}
    f = facade(ParallelConfig(), env)
    assert f.decide_use_parallel(*BIG).reason == "payload_too_large"
    assert f.decide_use_parallel(*BIG, bytes_hint=1000).reason == "enabled"


def test_per_call_executor_overrides_ce_parallel_and_the_facade_executor() -> None:
    with ThreadPoolExecutor(2) as pool:
        f = facade(ParallelConfig(), {"CE_PARALLEL": "joblib"}, executor=SpyExecutor())
        d = f.decide_use_parallel(*BIG, executor=pool)
        assert (d.strategy, d.workers) == ("threads", 2)
        assert d.executor_type == "concurrent.futures.thread.ThreadPoolExecutor"
        default = f.decide_use_parallel(*BIG)
        assert default.executor_type.endswith("SpyExecutor")


def test_an_enabled_caller_executor_enables_a_default_facade() -> None:
    spy = SpyExecutor(enabled=True, strategy="threads", max_workers=3)
    f = facade()
    d = f.decide_use_parallel(*BIG, executor=spy)
    assert (d.reason, d.strategy, d.workers) == ("enabled", "threads", 3)
    assert f.map(square, range(50), executor=spy, n_features=100) == [x * x for x in range(50)]
    assert spy.calls == 1


# -- the full-matrix flag, both ways ----------------------------------------------------------


@pytest.mark.parametrize("requested", FULL_MATRIX_STRATEGIES)
def test_without_full_matrix_the_gate_warns_once_per_facade(requested: str) -> None:
    config = enabled(requested)
    first, second = facade(config), facade(config)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        decisions = [first.decide_use_parallel(n, 10) for n in (1, 10, 100, 5000)]
        decisions += [first.decide_use_parallel(*BIG, bytes_hint=10**9)]
        assert len(gate_warnings(record)) == 1
        second.decide_use_parallel(1)
        assert len(gate_warnings(record)) == 2
    assert requested in str(gate_warnings(record)[0].message)
    assert all(d.strategy in CONSERVATIVE_STRATEGIES for d in decisions)
    assert {d.reason for d in decisions} >= {"below_min_instances", "full_matrix_disabled"}


def test_the_gate_warns_even_when_another_rule_makes_the_decision_serial() -> None:
    config = ParallelConfig(enabled=True, strategy="processes")
    with pytest.warns(FullMatrixWarning):
        d = facade(config, {"CE_PARALLEL": "processes,off"}).decide_use_parallel(*BIG)
    assert (d.reason, d.strategy) == ("operator_off", "sequential")


def test_subset_strategies_never_warn() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for config in (THREADS, JOBLIB, ParallelConfig()):
            facade(config).decide_use_parallel(*BIG)
    assert gate_warnings(record) == []


@given(
    requested=st.sampled_from(["processes", "dask", "auto"]),
    n=st.integers(0, 20000),
    f=st.integers(1, 50),
    cpus=st.integers(1, 8),
    ci=st.booleans(),
    payload=st.one_of(st.none(), st.integers(0, 10**8)),
)
@settings(max_examples=150, deadline=None)
def test_without_full_matrix_no_decision_names_a_strategy_outside_the_subset(
    requested: str, n: int, f: int, cpus: int, ci: bool, payload: int | None
) -> None:
    config = enabled(requested)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FullMatrixWarning)
        d = facade(config, resources=machine(cpus, ci=ci)).decide_use_parallel(
            n, f, bytes_hint=payload
        )
    assert d.strategy in CONSERVATIVE_STRATEGIES
    assert not d.full_matrix


@pytest.mark.parametrize(
    ("config", "environ"),
    [
        (ParallelConfig(enabled=True, strategy="processes", full_matrix=True), {}),
        (ParallelConfig(enabled=True, strategy="processes"), {"CE_PARALLEL_FULL": "1"}),
        (ParallelConfig(), {"CE_PARALLEL": "processes", "CE_PARALLEL_FULL": "true"}),
    ],
    ids=["config-flag", "env-flag", "env-strategy-and-flag"],
)
def test_with_full_matrix_the_whole_matrix_is_available(
    config: ParallelConfig, environ: dict[str, str]
) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        d = facade(config, environ).decide_use_parallel(*BIG)
    assert gate_warnings(record) == []
    assert (d.reason, d.strategy, d.full_matrix) == ("enabled", "processes", True)
    assert d.executor_type == "ProcessExecutor"


@pytest.mark.parametrize("requested", ["dask", "auto"])
def test_full_matrix_reports_dask_and_auto_as_requested(requested: str) -> None:
    config = enabled(requested, full_matrix=True)
    d = facade(config).decide_use_parallel(*BIG)
    assert (d.reason, d.strategy) == ("enabled", requested)


def test_a_process_pool_passed_without_full_matrix_is_replaced_by_the_substitute() -> None:
    pool = ProcessPoolExecutor(2)  # never started: the facade does not use it
    try:
        with pytest.warns(FullMatrixWarning):
            d = facade(THREADS).decide_use_parallel(*BIG, executor=pool)
        assert (d.reason, d.requested_strategy, d.strategy) == (
            "full_matrix_disabled",
            "processes",
            heuristics.FULL_MATRIX_SUBSTITUTE,
        )
        full = facade(THREADS.replace(full_matrix=True)).decide_use_parallel(*BIG, executor=pool)
        assert (full.strategy, full.workers) == ("processes", 2)
    finally:
        pool.shutdown()


def test_a_caller_executor_asking_for_auto_is_gated_too(quiet: None) -> None:
    spy = SpyExecutor(strategy="auto")
    f = facade()
    d = f.decide_use_parallel(*BIG, executor=spy)
    assert (d.reason, d.strategy) == ("full_matrix_disabled", "joblib")


def test_an_executor_of_unknown_kind_is_reported_as_external() -> None:
    class Mapper:
        def map(self, fn: Callable[..., Any], items: Iterable[Any]) -> list[Any]:
            return [fn(x) for x in items]

    d = facade().decide_use_parallel(*BIG, executor=Mapper())
    assert (d.reason, d.strategy, d.workers) == ("enabled", EXTERNAL, 4)


# -- records -----------------------------------------------------------------------------------


def _sample_decisions() -> list[ParallelDecision]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FullMatrixWarning)
        return [
            facade(THREADS).decide_use_parallel(*BIG),
            facade(JOBLIB).decide_use_parallel(*BIG, bytes_hint=10**9),
            facade(ParallelConfig(enabled=True, strategy="auto")).decide_use_parallel(7, 3),
            facade(JOBLIB).decide_use_parallel(100, seconds_per_item=0.25),
            facade(THREADS, resources=machine(1)).decide_use_parallel(*BIG),
        ]


@pytest.mark.parametrize("decision", _sample_decisions(), ids=lambda d: d.reason)
def test_as_dict_round_trips_through_json(decision: ParallelDecision) -> None:
    text = json.dumps(decision.as_dict(), allow_nan=False)
    assert ParallelDecision(**json.loads(text)) == decision


def test_as_dict_has_the_documented_fields() -> None:
    data = facade(THREADS).decide_use_parallel(*BIG).as_dict()
    for key in (
        "use_parallel",
        "decision",
        "strategy",
        "workers",
        "reason",
        "n_instances",
        "n_features",
        "bytes_hint",
        "platform",
        "executor_type",
        "cpu_budget",
        "cpu_limited_by",
    ):
        assert key in data
    assert data["platform"] == "linux/fork"


def test_every_decision_emits_one_decision_record() -> None:
    sink = Recorder()
    f = facade(THREADS, telemetry=sink)
    first = f.decide_use_parallel(*BIG)
    second = f.decide_use_parallel(3)
    assert sink.events("decision") == [first.as_dict(), second.as_dict()]


def test_decision_records_reach_the_jsonl_file_named_by_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    f = facade(THREADS, {"CE_PARALLEL_TELEMETRY": str(path)})
    d = f.decide_use_parallel(3)
    (line,) = [json.loads(x) for x in path.read_text().splitlines()]
    assert line["event"] == "decision"
    assert line["reason"] == d.reason == "below_min_instances"


def test_a_raising_sink_is_logged_once_and_never_breaks_decisions_or_maps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: str, payload: dict[str, Any]) -> None:
        raise RuntimeError("dashboard is down")

    with (
        caplog.at_level(logging.WARNING, logger="ce_parallel.telemetry"),
        facade(THREADS, telemetry=broken) as f,
    ):
        assert f.decide_use_parallel(*BIG).reason == "enabled"
        assert f.map(square, range(200), n_features=100) == [x * x for x in range(200)]
        assert f.map(square, range(3)) == [0, 1, 4]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1


# -- determinism -------------------------------------------------------------------------------


@given(
    n=st.integers(0, 100000),
    f=st.integers(1, 100),
    payload=st.one_of(st.none(), st.integers(0, 10**8)),
    cpus=st.integers(1, 16),
    ci=st.booleans(),
    strategy=st.sampled_from(["sequential", "threads", "joblib", "processes"]),
    full=st.booleans(),
)
@settings(max_examples=150, deadline=None)
def test_same_inputs_give_the_same_decision(
    n: int, f: int, payload: int | None, cpus: int, ci: bool, strategy: str, full: bool
) -> None:
    config = enabled(strategy, full_matrix=full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FullMatrixWarning)
        one = facade(config, resources=machine(cpus, ci=ci))
        two = facade(config, resources=machine(cpus, ci=ci))
        decisions = [
            one.decide_use_parallel(n, f, bytes_hint=payload),
            one.decide_use_parallel(n, f, bytes_hint=payload),
            two.decide_use_parallel(n, f, bytes_hint=payload),
        ]
    assert decisions[0] == decisions[1] == decisions[2]
    assert decisions[0].reason in REASONS
    assert decisions[0].use_parallel == (decisions[0].decision == "parallel")


def test_decisions_do_not_depend_on_earlier_maps() -> None:
    def essentials(d: ParallelDecision) -> tuple[Any, ...]:
        # the pool's start-up is measured by the map (it depends on this machine's speed) and
        # the pool is warm afterwards: those numbers may change, the decision and the cost of
        # the items asked about may not
        return (
            d.use_parallel,
            d.strategy,
            d.workers,
            d.reason,
            d.cost_source,
            d.per_item_s,
            d.estimated_serial_s,
        )

    with facade(THREADS) as f:
        before = f.decide_use_parallel(*BIG)
        f.map(square, range(300), n_features=100)
        assert essentials(f.decide_use_parallel(*BIG)) == essentials(before)


# -- facade.map --------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [ParallelConfig(), THREADS], ids=["serial", "parallel"])
def test_map_equals_the_serial_loop(config: ParallelConfig) -> None:
    with facade(config) as f:
        hint = {"seconds_per_item": 0.01}
        assert f.map(square, range(500), **hint) == [x * x for x in range(500)]
        assert f.last_decision is not None
        assert f.last_decision.use_parallel == config.enabled
        assert f.map(square, iter(range(20)), **hint) == [x * x for x in range(20)]
        assert f.map(square, []) == []


def test_seeded_map_gives_the_same_results_serial_parallel_and_on_a_caller_executor() -> None:
    items = list(range(300))
    with facade() as off:
        serial = off.map(noisy, items, n_features=100, seed=7)
        assert off.last_decision is not None and not off.last_decision.use_parallel
    with facade(THREADS) as f, ThreadPoolExecutor(2) as pool:
        parallel = f.map(noisy, items, seconds_per_item=0.01, seed=7)
        assert f.last_decision is not None and f.last_decision.use_parallel
        external = f.map(noisy, items, seconds_per_item=0.01, seed=7, executor=pool)
        assert f.last_decision.executor_type.endswith("ThreadPoolExecutor")
    assert serial == parallel == external
    assert serial != [noisy(x, __import__("numpy").random.default_rng(8)) for x in items]


@pytest.mark.parametrize("config", [ParallelConfig(), THREADS], ids=["serial", "parallel"])
def test_map_accepts_progress(config: ParallelConfig) -> None:
    with facade(config) as f:
        assert f.map(square, range(40), n_features=100, progress=True) == [x * x for x in range(40)]


def test_map_weighs_n_instances_when_the_items_are_not_the_instances() -> None:
    with facade(THREADS) as f:
        # three items (say, one per feature) over 5000 instances each
        assert f.map(square, [1, 2, 3], n_instances=5000, n_features=10) == [1, 4, 9]
        assert f.last_decision is not None
        assert (f.last_decision.reason, f.last_decision.n_instances) == ("enabled", 5000)
        # with a measured cost the count rules step aside: the pilot says the work is tiny
        f.map(square, range(5000), n_instances=3)
        assert (f.last_decision.reason, f.last_decision.cost_source) == ("spawn_cost", "pilot")
        assert f.decide_use_parallel(3).reason == "below_min_instances"


def test_map_records_decision_and_run() -> None:
    sink = Recorder()
    with facade(THREADS, telemetry=sink) as f:
        f.map(square, range(400), seconds_per_item=0.01)
    (decision,) = sink.events("decision")
    assert decision["reason"] == "enabled"
    (run,) = sink.events("run")
    assert run["items"] == 400
    assert run["decision_id"] == decision["decision_id"] != ""
    assert (
        decision["call_site"] == run["call_site"] == f"{__name__}:test_map_records_decision_and_run"
    )


def test_pools_are_reused_and_released_by_close() -> None:
    f = facade(THREADS, share_pools=False)
    f.map(square, range(300), seconds_per_item=0.01)
    pool = f.executors["threads"]
    assert isinstance(pool, ThreadExecutor)
    f.map(square, range(300), seconds_per_item=0.01)
    assert f.executors["threads"] is pool
    f.close()
    f.close()  # idempotent
    assert f.executors == {}
    with pytest.raises(RuntimeError, match="shut down"):
        pool.map(square, [1])
    with pytest.raises(RuntimeError, match="closed"):
        f.map(square, [1])


def test_facades_of_one_configuration_share_their_pools_across_calls() -> None:
    from ce_parallel import release_shared_pools
    from ce_parallel.pools import shared_pool_count

    def library_call() -> Any:
        # a library builds its facade inside the function it parallelises
        with facade(THREADS) as f:
            f.map(square, range(300), seconds_per_item=0.01)
            return f.executors["threads"]

    first, second = library_call(), library_call()
    assert first is second and not first.closed  # the second call found the pool warm
    assert shared_pool_count() == 1
    other = facade(THREADS.replace(max_workers=3))
    other.map(square, range(300), seconds_per_item=0.01)
    assert other.executors["threads"] is not first  # another configuration, another pool
    other.close()
    release_shared_pools()
    assert first.closed and shared_pool_count() == 0


def test_context_manager_closes_owned_executors_but_not_the_callers() -> None:
    with ThreadPoolExecutor(2) as pool:
        with facade(THREADS, share_pools=False) as f:
            f.map(square, range(300), seconds_per_item=0.01)
            f.map(square, range(300), seconds_per_item=0.01, executor=pool)
            owned = f.executors["threads"]
        with pytest.raises(RuntimeError):
            owned.map(square, [1])
        assert pool.submit(square, 3).result() == 9


def test_user_errors_from_a_caller_executor_propagate_with_their_type() -> None:
    def boom(x: int) -> int:
        raise KeyError(x)

    sink = Recorder()
    with ThreadPoolExecutor(2) as pool, facade(telemetry=sink) as f, pytest.raises(KeyError):
        f.map(boom, range(100), n_features=100, executor=pool)
    (run,) = sink.events("run")
    assert run["error"] == "KeyError"
    assert sink.events("fallback") == []


def test_a_broken_caller_executor_falls_back_to_serial_and_says_so() -> None:
    sink = Recorder()
    f = facade(THREADS, telemetry=sink)
    assert f.map(square, range(100), n_features=100, executor=BrokenPool()) == [
        x * x for x in range(100)
    ]
    (fallback,) = sink.events("fallback")
    assert (fallback["action"], fallback["cause"], fallback["items"]) == (
        "serial",
        "WorkerCrashedError",
        100,
    )
    assert fallback["detail"].startswith("BrokenExecutor")
    assert sink.events("run")[-1]["fallbacks"] == 1


def test_a_broken_caller_executor_raises_when_fallback_is_raise() -> None:
    sink = Recorder()
    f = facade(THREADS.replace(fallback="raise"), telemetry=sink)
    with pytest.raises(BrokenExecutor):
        f.map(square, range(100), n_features=100, executor=BrokenPool())
    assert sink.events("fallback")[0]["action"] == "raise"


# -- construction and validation ---------------------------------------------------------------


def test_from_env_applies_the_environment_on_top_of_the_base() -> None:
    f = ParallelFacade.from_env(
        THREADS.replace(min_batch_size=4),
        {"CE_PARALLEL": "joblib,workers=2", "CE_PARALLEL_FULL": "1"},
        resources=machine(),
    )
    assert (f.config.strategy, f.config.max_workers, f.config.full_matrix) == ("joblib", 2, True)
    assert f.config.min_batch_size == 4


def test_telemetry_argument_replaces_the_config_callback() -> None:
    old, new = Recorder(), Recorder()
    f = facade(THREADS.replace(telemetry=old), telemetry=new)
    f.decide_use_parallel(3)
    assert old.records == [] and len(new.records) == 1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_instances": -1}, "n_instances"),
        ({"n_instances": 2.5}, "n_instances"),
        ({"n_instances": 10, "n_features": 0}, "n_features"),
        ({"n_instances": 10, "bytes_hint": -1}, "bytes_hint"),
        ({"n_instances": 10, "seconds_per_item": 0}, "seconds_per_item"),
        ({"n_instances": 10, "seconds_per_item": float("inf")}, "seconds_per_item"),
        ({"n_instances": 10, "executor": object()}, "executor"),
    ],
)
def test_bad_arguments_raise_an_error_naming_them(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        facade(THREADS).decide_use_parallel(**kwargs)


def test_bad_constructor_arguments_and_environment_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="config"):
        not_a_config: Any = {"enabled": True}
        ParallelFacade(not_a_config, environ={}, resources=machine())
    with pytest.raises(ConfigurationError, match="executor"):
        facade(executor=42)
    with pytest.raises(ConfigurationError, match="telemetry"):
        facade(telemetry="log")
    with pytest.raises(ConfigurationError, match="bogus"):
        facade(environ={"CE_PARALLEL": "bogus"})


def test_map_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        not_callable: Any = 42
        facade().map(not_callable, [1])


def test_the_full_matrix_warning_points_at_the_callers_line() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        facade(enabled("processes")).decide_use_parallel(*BIG)
    (warning,) = gate_warnings(caught)
    assert warning.filename == __file__
