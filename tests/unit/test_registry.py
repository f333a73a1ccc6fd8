"""The registry is the one place that knows a strategy; one call adds one."""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Iterator
from concurrent.futures import BrokenExecutor

import pytest

from ce_parallel import (
    BackendUnavailableError,
    ConfigurationError,
    ParallelConfig,
    ParallelFacade,
    SerializationError,
    WorkerCrashedError,
    create_executor,
    register_strategy,
    strategy_names,
)
from ce_parallel.checks import OFF_WORDS, ON_WORDS, parse_switch
from ce_parallel.config import ConfigurationWarning, parse_ce_parallel
from ce_parallel.errors import ParallelExecutionError, classify_failure
from ce_parallel.registry import strategy_record, unregister_strategy
from ce_parallel.resources import CpuBudget, Resources
from ce_parallel.strategies.threads import ThreadExecutor


class EchoThreads(ThreadExecutor):
    name = "echo"


@pytest.fixture
def echo() -> Iterator[str]:
    register_strategy("echo", EchoThreads, conservative=True, summary="threads, renamed")
    try:
        yield "echo"
    finally:
        unregister_strategy("echo")


def test_builtin_records_keep_pickling_and_child_processes_apart() -> None:
    facts = {
        n: (strategy_record(n).pickles_work, strategy_record(n).separate_processes)
        for n in ("sequential", "threads", "processes", "joblib", "dask")
    }
    assert facts == {
        "sequential": (False, False),
        "threads": (False, False),
        "processes": (True, True),
        "joblib": (True, True),
        # a Dask cluster's workers receive pickled work but are not the caller's children
        "dask": (True, False),
    }


def test_one_call_makes_a_strategy_known_everywhere(echo: str) -> None:
    assert echo in strategy_names()
    config = ParallelConfig(enabled=True, strategy=echo)
    with create_executor(config, max_workers=2) as ex:
        assert type(ex) is EchoThreads
        assert ex.map(abs, [-1, -2, 3]) == [1, 2, 3]
        assert ex.metrics.fallbacks == 0
    assert parse_ce_parallel(echo) == {"strategy": echo, "enabled": True}
    machine = Resources(budget=CpuBudget(4, "affinity", {"affinity": 4}))
    with ParallelFacade(config, resources=machine, environ={}) as facade:
        decision = facade.decide_use_parallel(10_000, 10)
        assert (decision.use_parallel, decision.strategy) == (True, echo)
        assert facade.map(abs, [-5] * 64, seconds_per_item=1.0) == [5] * 64
        assert echo in facade.executors


def test_doctor_lists_a_registered_strategy(echo: str) -> None:
    from ce_parallel.cli import gather

    facts = gather(environ={})
    assert facts["strategies"][echo] is True
    json.dumps(facts)


def test_an_unregistered_name_is_rejected_with_the_registered_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"'nope'.*sequential, threads"):
        ParallelConfig(strategy="nope")


@pytest.mark.parametrize("name", ["", "Upper", "off", "on", "a,b", "workers", 3])
def test_bad_strategy_names_are_rejected(name: object) -> None:
    with pytest.raises(ConfigurationError, match="register_strategy"):
        register_strategy(name, EchoThreads)  # type: ignore[arg-type]


def test_registering_twice_needs_replace(echo: str) -> None:
    with pytest.raises(ConfigurationError, match="already registered"):
        register_strategy(echo, EchoThreads)
    register_strategy(echo, EchoThreads, replace=True, conservative=True)


def test_a_start_fallback_must_be_registered() -> None:
    with pytest.raises(ConfigurationError, match="start_fallback"):
        register_strategy("lonely", "x.y:Z", start_fallback="nowhere")


def test_a_class_whose_name_differs_is_reported_on_use() -> None:
    register_strategy("misnamed", ThreadExecutor)
    try:
        with pytest.raises(ConfigurationError, match="name = 'misnamed'"):
            create_executor(ParallelConfig(strategy="misnamed"))
    finally:
        unregister_strategy("misnamed")


def test_builtin_strategies_cannot_be_unregistered() -> None:
    with pytest.raises(ConfigurationError, match="built in"):
        unregister_strategy("threads")


def test_one_vocabulary_of_switch_words() -> None:
    for word in ON_WORDS:
        assert parse_switch("X", word.upper()) is True
    for word in OFF_WORDS:
        assert parse_switch("X", f" {word} ") is False
    with pytest.raises(ConfigurationError, match=r"X='maybe'.*yes or .*disable"):
        parse_switch("X", "maybe")
    for word in ("disable", "no"):
        assert parse_ce_parallel(f"threads,{word}")["enabled"] is False
    assert ParallelConfig.from_env(environ={"CE_PARALLEL_FULL": "yes"}).full_matrix is True


def test_off_wins_over_a_malformed_token_and_says_so() -> None:
    with pytest.warns(ConfigurationWarning, match="'thread'"):
        assert parse_ce_parallel("off,thread") == {"enabled": False}
    with pytest.raises(ConfigurationError, match="'thread'"):
        parse_ce_parallel("on,thread")


class _Unrelated(Exception):
    pass


def _caused(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (pickle.PicklingError("x"), SerializationError),
        (_caused(RuntimeError("wrapped"), pickle.PicklingError("x")), SerializationError),
        (BrokenExecutor("x"), WorkerCrashedError),
        (ImportError("no joblib"), BackendUnavailableError),
        (WorkerCrashedError("x"), WorkerCrashedError),
        # the message says "worker" and "pickle", the type says neither: not classified by text
        (_Unrelated("worker failed to pickle"), ParallelExecutionError),
    ],
)
def test_failures_are_classified_by_type_not_text(failure: BaseException, expected: type) -> None:
    assert classify_failure(failure) is expected


def test_compat_config_declares_every_core_field() -> None:
    from ce_parallel.compat.calibrated_explanations import (
        _CORE_ONLY_FIELDS,
        shared_fields,
    )

    core = [f.name for f in dataclasses.fields(ParallelConfig)]
    assert set(core) - set(shared_fields()) == set(_CORE_ONLY_FIELDS)


def test_a_config_changed_after_construction_is_checked_on_use() -> None:
    config = ParallelConfig(enabled=True, strategy="threads")
    with create_executor(config) as ex:
        config.max_workers = 0
        with pytest.raises(ConfigurationError, match="max_workers=0"):
            ex.map(abs, [1])
        config.max_workers = None
        config.timeout = "5"  # type: ignore[assignment]
        with pytest.raises(ConfigurationError, match="timeout='5'"):
            ex.map(abs, [1])
