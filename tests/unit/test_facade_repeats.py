"""A repeated serial map reuses its decision: what may change it makes the facade ask again.

No test here times anything: costs are hints or injected measurements, and ``RECHECK_MIN_S`` is
raised so that no run's own time can replace them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from machines import fake_machine

from ce_parallel import ParallelConfig, costing
from ce_parallel.costs import MEMORY, Measurement
from ce_parallel.facade import ParallelFacade
from ce_parallel.resources import Resources

THREADS = ParallelConfig(enabled=True, strategy="threads")


def machine(thread_start_s: float = 0.001) -> Resources:
    return fake_machine(thread_start_s=thread_start_s)


def make(config: ParallelConfig = THREADS, **kwargs: Any) -> ParallelFacade:
    kwargs.setdefault("resources", machine())
    return ParallelFacade(config, environ={}, **kwargs)


@pytest.fixture(autouse=True)
def _no_rechecks(monkeypatch: pytest.MonkeyPatch) -> None:
    # a run's own time never replaces an injected measurement here
    monkeypatch.setattr(costing, "RECHECK_MIN_S", 1e9)


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The reasons of every decision a map asked for (rather than reusing a repeat's)."""
    reasons: list[str] = []
    real = ParallelFacade._decide

    def counting(self: ParallelFacade, *args: Any, **kwargs: Any) -> Any:
        decision, given = real(self, *args, **kwargs)
        reasons.append(decision.reason)
        return decision, given

    monkeypatch.setattr(ParallelFacade, "_decide", counting)
    yield reasons


def where(x: int) -> tuple[int, str]:
    return x * 2, threading.current_thread().name


def test_a_repeated_serial_map_is_decided_once(asked: list[str]) -> None:
    with make() as f:
        runs = [f.map(where, range(50), seconds_per_item=1e-6) for _ in range(4)]
    me = threading.current_thread().name
    assert all(run == [(2 * x, me) for x in range(50)] for run in runs)
    assert asked == ["spawn_cost"]
    assert f.last_decision is not None and f.last_decision.reason == "spawn_cost"


def test_a_disabled_facade_learns_the_cost_and_runs_cheap_repeats_without_asking(
    asked: list[str],
) -> None:
    # without a cost the assumption (FACADE_SECONDS_PER_WORK_ITEM per item) is far too long
    # for the one-block repeat; the first serial run measures the items, whatever made it serial
    with make(ParallelConfig()) as f:
        for _ in range(5):
            assert f.map(where, range(2_000))[-1][0] == 3_998
        assert asked == ["disabled", "disabled"]  # assumed, then remembered; then repeats
        assert f.last_decision is not None and f.last_decision.cost_source == "remembered"
    known = MEMORY.recall(MEMORY.key(where))
    assert known is not None and known.items == 2_000


def test_a_remembered_cost_is_reused_until_the_memory_changes(asked: list[str]) -> None:
    MEMORY.remember_fn(where, Measurement(per_item_s=1e-6, items=50))
    with make() as f:
        for _ in range(3):
            assert f.map(where, range(50))[-1][0] == 98
        assert asked == ["spawn_cost"]
        assert f.last_decision is not None and f.last_decision.cost_source == "remembered"
        # a new measurement (a recheck, another facade's pilot) is a new question
        MEMORY.remember_fn(where, Measurement(per_item_s=0.01, items=50, holds_gil=False))
        names = {name for _, name in f.map(where, range(50))}
        assert asked == ["spawn_cost", "enabled"]
        assert names and all(name.startswith("ce-parallel-thread") for name in names)


def test_a_pool_that_becomes_warm_turns_a_repeated_serial_decision(asked: list[str]) -> None:
    # 100 x 0.15 ms = 15 ms: not worth a 50 ms thread start, worth a warm pool
    slow_start = machine(thread_start_s=0.05)
    with make(resources=slow_start) as f:
        f.map(where, range(100), seconds_per_item=1.5e-4)
        f.map(where, range(100), seconds_per_item=1.5e-4)
        assert asked == ["spawn_cost"]
        f.map(where, range(100), seconds_per_item=1.0)  # starts and warms the pool
        names = {name for _, name in f.map(where, range(100), seconds_per_item=1.5e-4)}
        assert asked == ["spawn_cost", "enabled", "enabled"]
        assert f.last_decision is not None and f.last_decision.start_cost_s == 0.0
        assert all(name.startswith("ce-parallel-thread") for name in names)


def test_a_failing_item_of_a_repeat_is_named(asked: list[str]) -> None:
    def fragile(x: int) -> int:
        if x < 0:
            raise ValueError(f"bad item {x}")
        return x

    with make() as f:
        f.map(fragile, [0, 1, 2, 3, 4], seconds_per_item=1e-6)
        with pytest.raises(ValueError, match="bad item -1") as caught:
            f.map(fragile, [0, 1, 2, -1, 4], seconds_per_item=1e-6)
        assert f.map(fragile, [4, 3, 2, 1, 0], seconds_per_item=1e-6) == [4, 3, 2, 1, 0]
    assert asked == ["spawn_cost"]  # the failing map was a repeat too
    assert caught.value.ce_parallel_item_index == 3  # type: ignore[attr-defined]
    assert "raised by item 3" in "".join(getattr(caught.value, "__notes__", []))


def test_the_serial_counters_count_repeats() -> None:
    with make() as f:
        for _ in range(3):
            f.map(where, range(20), seconds_per_item=1e-6)
        metrics = f.executors["sequential"].metrics.snapshot()
    assert (metrics["maps"], metrics["tasks_submitted"], metrics["tasks_completed"]) == (3, 60, 60)


def test_a_telemetry_sink_records_every_repeat(asked: list[str]) -> None:
    events: list[str] = []
    with make(telemetry=lambda event, payload: events.append(event)) as f:
        for _ in range(3):
            f.map(where, range(20), seconds_per_item=1e-6)
    assert events.count("decision") == 3 and events.count("run") == 3


def test_switching_debug_logging_on_records_the_next_repeat(
    asked: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    with make() as f:
        f.map(where, range(20), seconds_per_item=1e-6)
        f.map(where, range(20), seconds_per_item=1e-6)
        with caplog.at_level(logging.DEBUG, logger="ce_parallel.telemetry"):
            f.map(where, range(20), seconds_per_item=1e-6)
        # decided in full from the same question: the hint is kept
        assert f.last_decision is not None and f.last_decision.cost_source == "hint"
        assert f.last_decision.seconds_per_item == 1e-6
    assert asked == ["spawn_cost", "spawn_cost"]
    assert any("decision" in r.getMessage() for r in caplog.records)


def test_a_joblib_setting_entered_between_repeats_is_honoured(asked: list[str]) -> None:
    joblib = pytest.importorskip("joblib")
    with make(ParallelConfig(enabled=True, strategy="joblib")) as f:
        f.map(where, range(20), seconds_per_item=1e-6)
        with joblib.parallel_config(n_jobs=1):
            f.map(where, range(20), seconds_per_item=1e-6)
            assert f.last_decision is not None and f.last_decision.reason == "library_config"
        f.map(where, range(20), seconds_per_item=1e-6)
        assert f.last_decision is not None and f.last_decision.reason == "spawn_cost"
    # outside the setting again, the first map's decision is the answer
    assert asked == ["spawn_cost", "library_config"]


def test_a_repeat_from_another_thread_is_asked_there(asked: list[str]) -> None:
    with make() as f:
        f.map(where, range(20), seconds_per_item=1e-6)
        other = threading.Thread(
            target=lambda: [f.map(where, range(20), seconds_per_item=1e-6) for _ in range(2)]
        )
        other.start()
        other.join()
        f.map(where, range(20), seconds_per_item=1e-6)
    assert asked == ["spawn_cost", "spawn_cost"]


def test_a_closed_facade_refuses_a_repeat() -> None:
    f = make()
    f.map(where, range(20), seconds_per_item=1e-6)
    f.close()
    with pytest.raises(RuntimeError, match="closed"):
        f.map(where, range(20), seconds_per_item=1e-6)


def test_a_bool_is_refused_even_after_an_equal_int_was_repeated() -> None:
    from ce_parallel.errors import ConfigurationError

    with make() as f:
        f.map(where, range(20), n_features=1, seconds_per_item=1e-6)
        f.map(where, range(20), n_features=1, seconds_per_item=1e-6)
        with pytest.raises(ConfigurationError):
            f.map(where, range(20), n_features=True, seconds_per_item=1e-6)


def test_a_config_changed_between_repeats_is_a_new_question(asked: list[str]) -> None:
    with make() as f:
        f.map(where, range(20), seconds_per_item=1e-6)
        f.map(where, range(20), seconds_per_item=1e-6)
        f.config.enabled = False
        f.map(where, range(20), seconds_per_item=1e-6)
        assert f.last_decision is not None and not f.last_decision.use_parallel
    assert asked == ["spawn_cost", "disabled"]
