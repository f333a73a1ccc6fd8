"""The one gate, against injected machines and injected measurements (nothing is timed here)."""

from __future__ import annotations

import gc
import os
import threading
import weakref
from typing import Any

import pytest

from ce_parallel import ParallelConfig, ParallelFacade, create_executor
from ce_parallel.costing import Costing, check_run
from ce_parallel.costs import MEMORY, Measurement
from ce_parallel.gate import REASONS, RULES, Ground, Question, decide
from ce_parallel.resources import CpuBudget, Resources

THREADS = ParallelConfig(enabled=True, strategy="threads")
JOBLIB = ParallelConfig(enabled=True, strategy="joblib")


def machine(cpus: int = 2, **starts: float) -> Resources:
    return Resources(
        budget=CpuBudget(cpus, "affinity", {"affinity": cpus}),
        thread_start_s=starts.get("thread", 0.001),
        process_start_s=starts.get("process", 0.2),
        spawn_cost_s=starts.get("spawn", 0.01),
    )


def ground(config: ParallelConfig = THREADS, **kwargs: Any) -> Ground:
    return Ground(config, kwargs.pop("resources", machine()), **kwargs)


def facade(config: ParallelConfig = THREADS, **kwargs: Any) -> ParallelFacade:
    return ParallelFacade(config, environ=kwargs.pop("environ", {}), resources=machine(), **kwargs)


def test_reason_codes_are_the_tables_codes() -> None:
    assert ("enabled", "full_matrix_disabled", *(rule.code for rule in RULES)) == REASONS
    assert len(set(REASONS)) == len(REASONS)


def test_a_hint_decides_on_cost_where_the_counts_would_say_tiny() -> None:
    # 8 sleeps of 0.2 s: below every count threshold, but 1.6 s of work
    d = decide(Question(8, per_item_s=0.2, cost_source="hint", requested="threads"), ground())
    assert (d.decision, d.reason, d.cost_source) == ("parallel", "enabled", "hint")
    # 10 items of 30 ms are 0.3 s of work, not a "tiny" workload
    d = decide(Question(10, per_item_s=0.03, cost_source="hint", requested="threads"), ground())
    assert d.use_parallel
    # without a cost the same counts are tiny, and the decision says the cost was assumed
    d = decide(Question(10, requested="threads"), ground())
    assert (d.reason, d.cost_source) == ("tiny_workload", "assumed")


def test_a_warm_pool_costs_nothing_to_start() -> None:
    question = Question(1000, per_item_s=300e-6, cost_source="hint", requested="joblib")
    cold = decide(question, ground(JOBLIB))
    warm = decide(Question(**{**question.__dict__, "warm": True}), ground(JOBLIB))
    assert (cold.use_parallel, cold.start_cost_s) == (False, 0.2)
    assert (warm.use_parallel, warm.start_cost_s) == (True, 0.0)


def test_a_measured_start_up_replaces_the_prior() -> None:
    question = Question(1000, per_item_s=3e-3, cost_source="hint", requested="joblib")
    assert decide(question, ground(JOBLIB)).use_parallel
    MEMORY.record_start("joblib", 5.0)
    slow = decide(question, ground(JOBLIB))
    assert (slow.use_parallel, slow.reason, slow.start_cost_s) == (False, "spawn_cost", 5.0)


def test_threads_are_not_chosen_for_items_that_hold_the_gil() -> None:
    base = {"per_item_s": 0.01, "cost_source": "pilot", "requested": "threads"}
    assert decide(Question(1000, holds_gil=False, **base), ground()).use_parallel
    assert not decide(Question(1000, holds_gil=True, **base), ground()).use_parallel
    # measured but never probed: threads might meet the GIL, so no clear gain is assumed
    assert not decide(Question(1000, **base), ground()).use_parallel
    # a process pool does not care about the GIL
    joblib = {**base, "requested": "joblib"}
    assert decide(Question(1000, holds_gil=True, **joblib), ground(JOBLIB)).use_parallel


def test_a_clear_gain_is_required() -> None:
    # 2 items of 10 ms on 2 workers: at best 2x, but the margin is applied to the estimate
    d = decide(Question(100, per_item_s=1e-5, cost_source="hint", requested="threads"), ground())
    assert (d.use_parallel, d.reason) == (False, "spawn_cost")
    assert "MIN_PARALLEL_GAIN" in d.detail


def test_an_explicit_worker_count_is_honoured_above_the_budget() -> None:
    config = THREADS.replace(max_workers=4)
    d = decide(
        Question(16, per_item_s=0.2, cost_source="hint", requested="threads"), ground(config)
    )
    assert (d.use_parallel, d.workers) == (True, 4)
    assert "exceed the CPU budget of 2" in d.detail


def test_the_kill_switch_and_nesting_come_first_on_every_door() -> None:
    question = Question(1000, per_item_s=1.0, cost_source="hint", requested="threads")
    for door in ("facade", "executor"):
        off = decide(question, ground(operator_off=True, front_door=door))
        assert off.reason == "operator_off"
    nested = Question(**{**question.__dict__, "nested": "ce-parallel"})
    assert decide(nested, ground()).reason == "nested_worker"


def test_the_facade_kill_switch_holds_for_a_map_and_its_pools() -> None:
    with facade(environ={"CE_PARALLEL": "off"}) as f:
        where = f.map(_where, range(40), seconds_per_item=1.0)
        assert f.last_decision is not None and f.last_decision.reason == "operator_off"
        assert f.executors.keys() <= {"sequential"}
    assert set(where) == {(os.getpid(), threading.current_thread().name)}


def test_the_auto_strategy_honours_the_kill_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CE_PARALLEL", "off")
    MEMORY.remember_fn(_where, Measurement(per_item_s=0.05, holds_gil=True))
    config = ParallelConfig(enabled=True, strategy="auto", full_matrix=True)
    with create_executor(config) as ex:
        where = ex.map(_where, range(40))
        assert ex.last_decision.reason == "operator_off"  # type: ignore[attr-defined]
    assert set(where) == {(os.getpid(), threading.current_thread().name)}


def test_pilot_items_run_exactly_once() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def record(x: int) -> int:
        with lock:
            seen.append(x)
        return x * 2

    with facade() as f:
        assert f.map(record, range(200)) == [2 * x for x in range(200)]
        assert f.last_decision is not None and f.last_decision.cost_source == "pilot"
    assert sorted(seen) == list(range(200))


def test_a_repeated_map_recalls_instead_of_piloting_again() -> None:
    with facade() as f:
        f.map(_double, range(100))
        assert f.last_decision is not None and f.last_decision.cost_source == "pilot"
        f.map(_double, range(100))
        assert f.last_decision.cost_source == "remembered"


def test_a_remembered_measurement_is_dropped_with_its_function() -> None:
    def local(x: int) -> int:
        return x + 1

    alive = weakref.ref(local)
    with facade() as f:
        f.map(local, range(100))
    assert len(MEMORY) == 1
    del local
    gc.collect()
    assert alive() is None and len(MEMORY) == 0


def test_a_run_far_from_its_prediction_updates_the_memory() -> None:
    key = MEMORY.remember_fn(_double, Measurement(per_item_s=0.01, holds_gil=False))
    costing = Costing("remembered", MEMORY.recall(key), key)
    # within RECHECK_FACTOR of the prediction: confirmed, nothing changes
    assert not check_run(costing, "threads", 100, wall_s=0.6, predicted_s=0.5)
    assert MEMORY.recall(key).observed == ()  # type: ignore[union-attr]
    # 10x slower than predicted once: a suspect, and the decisions do not change yet
    assert not check_run(costing, "threads", 100, wall_s=5.0, predicted_s=0.5)
    assert MEMORY.recall(key).observed == ()  # type: ignore[union-attr]
    # ... then a run close to its prediction: that one was noise
    assert not check_run(costing, "threads", 100, wall_s=0.5, predicted_s=0.5)
    assert MEMORY.recall(key).suspect is None  # type: ignore[union-attr]
    # 10x slower twice in a row (threads met the GIL after all): remembered for threads
    assert not check_run(costing, "threads", 100, wall_s=4.0, predicted_s=0.5)
    assert check_run(costing, "threads", 100, wall_s=6.0, predicted_s=0.5)
    assert MEMORY.recall(key).observed_for("threads") == pytest.approx(0.05)  # type: ignore
    d = decide(
        Question(
            100,
            per_item_s=0.01,
            cost_source="remembered",
            requested="threads",
            holds_gil=False,
            observed_s=0.05,
        ),
        ground(),
    )
    assert not d.use_parallel  # the next decision uses what the run measured


def test_parallel_runs_slower_than_the_serial_loop_turn_the_decision_back() -> None:
    # the model was 1.5x optimistic: within RECHECK_FACTOR of its prediction, yet every run on
    # the pool loses to the loop it was chosen over
    key = MEMORY.remember_fn(_double, Measurement(per_item_s=0.001, holds_gil=False))
    costing = Costing("remembered", MEMORY.recall(key), key)
    # faster than the serial estimate, if slower than predicted: nothing changes
    assert not check_run(costing, "joblib", 100, wall_s=0.08, predicted_s=0.06, serial_s=0.1)
    # as slow as the serial estimate, within the decision's margin (the estimate is noisy too)
    assert not check_run(costing, "joblib", 100, wall_s=0.11, predicted_s=0.08, serial_s=0.1)
    assert MEMORY.recall(key).suspect is None  # type: ignore[union-attr]
    # MIN_PARALLEL_GAIN times slower than the loop once: a suspect only (one slow run may be
    # another process)
    assert not check_run(costing, "joblib", 100, wall_s=0.13, predicted_s=0.08, serial_s=0.1)
    assert MEMORY.recall(key).observed == ()  # type: ignore[union-attr]
    # twice in a row: what the pool really takes is remembered, and the next decision is serial
    assert check_run(costing, "joblib", 100, wall_s=0.14, predicted_s=0.08, serial_s=0.1)
    observed = MEMORY.recall(key).observed_for("joblib")  # type: ignore[union-attr]
    assert observed == pytest.approx(0.00135)
    d = decide(
        Question(
            100,
            per_item_s=0.001,
            cost_source="remembered",
            requested="joblib",
            observed_s=observed,
            warm=True,
        ),
        ground(JOBLIB),
    )
    assert not d.use_parallel and d.reason == "spawn_cost"
    # a serial run is never judged against itself
    assert not check_run(costing, "sequential", 100, wall_s=0.12, predicted_s=0.1, serial_s=0.1)
    assert MEMORY.recall(key).suspect is None  # type: ignore[union-attr]


def test_a_pool_slower_than_the_runner_up_was_estimated_turns_autos_choice() -> None:
    # threads chosen at 0.46 s over processes at 0.47 s; they run 0.61 s, well inside
    # RECHECK_FACTOR of their own estimate and faster than the loop (0.9 s)
    key = MEMORY.remember_fn(_double, Measurement(per_item_s=0.113, holds_gil=False))
    costing = Costing("remembered", MEMORY.recall(key), key)
    run = {"predicted_s": 0.46, "serial_s": 0.9}
    # within RUNNER_UP_MARGIN of the other pool's estimate: nothing changes
    assert not check_run(costing, "threads", 8, wall_s=0.5, runner_up_s=0.47, **run)
    assert MEMORY.recall(key).suspect is None  # type: ignore[union-attr]
    # without a runner-up (the facade weighs one pool) such a run is close enough
    assert not check_run(costing, "threads", 8, wall_s=0.61, **run)
    assert MEMORY.recall(key).suspect is None  # type: ignore[union-attr]
    assert not check_run(costing, "threads", 8, wall_s=0.61, runner_up_s=0.47, **run)
    assert check_run(costing, "threads", 8, wall_s=0.65, runner_up_s=0.47, **run)
    observed = MEMORY.recall(key).observed_for("threads")  # type: ignore[union-attr]
    assert observed == pytest.approx(0.63 / 8)
    # the run right after the pilot is not judged against the other pool
    fresh = MEMORY.remember_fn(_work, Measurement(per_item_s=0.113, holds_gil=False))
    piloted = Costing("pilot", MEMORY.recall(fresh), fresh)
    assert not check_run(piloted, "threads", 8, wall_s=0.61, runner_up_s=0.47, **run)
    assert not check_run(piloted, "threads", 8, wall_s=0.61, runner_up_s=0.47, **run)


@pytest.mark.parametrize(
    ("slow_on", "run_on"),
    [("joblib", "sequential"), ("threads", "processes")],
    ids=["kept-serial", "moved-to-another-pool"],
)
def test_a_function_kept_off_a_pool_by_its_times_tries_the_model_again(
    slow_on: str, run_on: str
) -> None:
    from ce_parallel.heuristics import OBSERVED_RETRY_MAPS

    slow = Measurement(per_item_s=0.001, holds_gil=False, observed=((slow_on, 0.002),))
    key = MEMORY.remember_fn(_double, slow)
    costing = Costing("remembered", MEMORY.recall(key), key)
    # runs elsewhere (serial, or another pool auto moved to) count towards the retry
    for _ in range(OBSERVED_RETRY_MAPS - 1):
        assert not check_run(costing, run_on, 100, wall_s=0.1, predicted_s=0.1)
    kept = MEMORY.recall(key)
    assert kept is not None and kept.observed_for(slow_on) == 0.002
    assert kept.unobserved_runs == OBSERVED_RETRY_MAPS - 1
    # the next one forgets what the pool measured: the model decides the next map
    assert check_run(costing, run_on, 100, wall_s=0.1, predicted_s=0.1)
    retried = MEMORY.recall(key)
    assert retried is not None and retried.observed == () and retried.unobserved_runs == 0
    assert retried.per_item_s == 0.001  # the serial measurement stays


def test_runs_on_the_timed_pool_or_of_an_untimed_function_count_nothing() -> None:
    from ce_parallel.heuristics import OBSERVED_RETRY_MAPS

    plain = MEMORY.remember_fn(_work, Measurement(per_item_s=0.001))
    check_run(Costing("remembered", MEMORY.recall(plain), plain), "sequential", 100, 0.1, 0.1)
    assert MEMORY.recall(plain).unobserved_runs == 0  # type: ignore[union-attr]
    timed = MEMORY.remember_fn(_double, Measurement(per_item_s=0.01, observed=(("joblib", 4e-3),)))
    on_it = Costing("remembered", MEMORY.recall(timed), timed)
    for _ in range(OBSERVED_RETRY_MAPS + 1):
        check_run(on_it, "joblib", 100, wall_s=0.4, predicted_s=0.4)
    assert MEMORY.recall(timed).observed_for("joblib") == 4e-3  # type: ignore[union-attr]


def test_auto_gives_the_same_choice_for_the_same_question() -> None:
    MEMORY.remember_fn(_double, Measurement(per_item_s=0.002, holds_gil=True))
    config = ParallelConfig(enabled=True, strategy="auto", full_matrix=True)
    with create_executor(config, resources=machine()) as ex:
        choices = []
        for _ in range(3):
            ex.map(_double, range(60))
            choices.append(ex.last_strategy)  # type: ignore[attr-defined]
    assert len(set(choices)) == 1, choices


def test_decide_use_parallel_without_a_function_says_it_assumed() -> None:
    d = facade().decide_use_parallel(200, 30)
    assert d.cost_source == "assumed" and d.per_item_s is not None


def _where(_: int) -> tuple[int, str]:
    return os.getpid(), threading.current_thread().name


def _double(x: int) -> int:
    return 2 * x


def _work(x: int) -> int:
    return sum(range(20_000)) + x


def _work_where(x: int) -> str:
    _work(x)
    return threading.current_thread().name


def test_the_pilot_sees_large_arrays_a_pickling_strategy_would_send() -> None:
    import functools

    np = pytest.importorskip("numpy")
    arrays = [np.ones(1_000_000) for _ in range(16)]  # 8 MB each
    with facade(JOBLIB) as f:
        assert f.map(_total, arrays) == [1_000_000.0] * 16
        d = f.last_decision
        assert d is not None and (d.reason, d.cost_source) == ("payload_too_large", "pilot")
        assert d.bytes_hint is not None and d.bytes_hint >= 8_000_000
        # an array bound into fn is seen too: it would travel with every chunk (enough items
        # that some are left after the pilot, which runs cheap items for PILOT_FREE_S)
        bound = functools.partial(_offset_total, arrays[0])
        f.map(bound, range(50_000))
        d = f.last_decision
        known = MEMORY.recall(MEMORY.key(bound))
        assert known is not None and known.fn_bytes is not None
        assert known.fn_bytes >= 8_000_000
        # the estimate carries at least one chunk's transfer of it, whatever the items cost
        # on this machine (a decision between the two would depend on its speed)
        from ce_parallel.heuristics import PROCESS_BYTES_PER_S

        assert d is not None and d.estimated_parallel_s is not None
        assert d.estimated_parallel_s >= known.fn_bytes / PROCESS_BYTES_PER_S


def test_a_function_another_facade_measured_first_is_sized_for_a_pickling_strategy() -> None:
    np = pytest.importorskip("numpy")
    arrays = [np.ones(1_000_000) for _ in range(16)]  # 8 MB each
    # a disabled facade (or one asking for threads) remembers the cost but no sizes
    with facade(ParallelConfig()) as off:
        off.map(_total, arrays)
    known = MEMORY.recall(MEMORY.key(_total))
    assert known is not None and not known.sized and known.item_bytes is None
    with facade(JOBLIB) as f:
        assert f.map(_total, arrays) == [1_000_000.0] * 16
        d = f.last_decision
        assert d is not None and (d.reason, d.cost_source) == ("payload_too_large", "remembered")
        assert d.bytes_hint is not None and d.bytes_hint >= 8_000_000
    known = MEMORY.recall(MEMORY.key(_total))
    assert known is not None and known.sized  # measured once, then remembered


def test_a_numpy_function_that_takes_no_weak_reference_is_remembered() -> None:
    np = pytest.importorskip("numpy")
    from ce_parallel.costs import function_key

    with pytest.raises(TypeError):
        weakref.ref(np.sum)
    assert MEMORY.key(np.sum) == MEMORY.key(np.sum) is not None
    assert function_key(np.add, lambda _: None) is not None  # a ufunc, held by numpy
    arrays = [np.ones(1_000_000) for _ in range(16)]  # 8 MB each
    with facade(JOBLIB) as f:
        f.map(np.sum, arrays)
        assert f.last_decision is not None and f.last_decision.cost_source == "pilot"
        assert f.map(np.sum, arrays) == [1_000_000.0] * 16
        d = f.last_decision
        # measured once: the second map neither pilots nor sizes the arrays again
        assert d is not None and (d.reason, d.cost_source) == ("payload_too_large", "remembered")


def test_a_callable_its_module_does_not_hold_is_not_kept_by_the_memory() -> None:
    import operator

    from ce_parallel.costs import function_key

    getter = operator.itemgetter(1)  # no weak reference, and no module holds it
    assert function_key(getter, lambda _: None) is None


def test_a_function_remembered_with_item_sizes_only_is_sized_whole() -> None:
    import functools

    np = pytest.importorskip("numpy")
    bound = functools.partial(_offset_total, np.ones(1_000_000))  # 8 MB carried by fn
    # what a pilot that found the items holding the GIL leaves: the items' sizes, not fn's
    MEMORY.remember_fn(
        bound, Measurement(per_item_s=1e-6, holds_gil=True, item_bytes=5, item_unshared_bytes=5)
    )
    with facade(JOBLIB) as f:
        f.map(bound, range(2_000))
        assert f.last_decision is not None and f.last_decision.cost_source == "remembered"
    known = MEMORY.recall(MEMORY.key(bound))
    assert known is not None and known.sized
    assert known.item_bytes == 5  # what was measured stays
    assert known.fn_bytes is not None and known.fn_bytes >= 8_000_000


def _total(a: Any) -> float:
    return float(a.sum())


def _offset_total(a: Any, i: int) -> float:
    return float(a[i])


def _decide_inside_a_worker(_: int) -> tuple[str, str | None]:
    d = ParallelFacade(THREADS, environ={}).decide_use_parallel(10_000, seconds_per_item=1.0)
    return d.reason, d.nested


@pytest.mark.timeout(60)
def test_a_decision_inside_another_librarys_process_worker_is_nested() -> None:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1) as pool:
        assert pool.submit(_decide_inside_a_worker, 0).result() == (
            "nested_worker",
            "process-pool",
        )
    # and outside any worker the same question runs in parallel
    assert _decide_inside_a_worker(0) == ("enabled", None)


def test_a_verdict_of_holding_the_gil_is_probed_again_until_the_votes_settle() -> None:
    # one probe said "holds the GIL": a serial decision would never put that to the test
    MEMORY.remember_fn(
        _work, Measurement(per_item_s=0.001, holds_gil=True, gil_probes=1, gil_bound_probes=1)
    )
    with facade() as f:
        f.map(_work, range(200))
        assert f.last_decision is not None and f.last_decision.cost_source == "pilot"
    known = MEMORY.recall(MEMORY.key(_work))
    # a second probe ran: it voted, or its threads ran one after another and it could not
    assert known is not None and known.gil_probes + known.gil_unread_probes == 2
    # a settled verdict is recalled without probing again
    MEMORY.remember_fn(
        _double, Measurement(per_item_s=0.001, holds_gil=True, gil_probes=3, gil_bound_probes=3)
    )
    with facade() as f:
        f.map(_double, range(400))
        assert f.last_decision is not None and f.last_decision.cost_source == "remembered"


def test_a_remembered_function_never_probed_is_probed_on_a_map_with_the_work() -> None:
    # its pilot took the whole of a short map, so no probe ran: unprobed items are assumed to
    # hold the GIL, and without a later probe threads would never be chosen for it
    from ce_parallel.heuristics import THREAD_PROBE_MIN_WORK_S

    calls: list[tuple[int, str]] = []
    lock = threading.Lock()

    def record(x: int) -> int:
        with lock:
            calls.append((x, threading.current_thread().name))
        return x * 3

    n = 20
    MEMORY.remember_fn(record, Measurement(per_item_s=THREAD_PROBE_MIN_WORK_S / 10))
    with facade() as f:
        assert f.map(record, range(n)) == [3 * x for x in range(n)]
        assert f.last_decision is not None and f.last_decision.cost_source == "pilot"
    assert sorted(x for x, _ in calls) == list(range(n))  # each item once
    assert {name for _, name in calls} == {"ce-parallel-probe"}  # all on the probe's threads
    known = MEMORY.recall(MEMORY.key(record))
    # one probe ran: it voted, or its threads ran one after another and it could not
    assert known is not None and known.gil_probes + known.gil_unread_probes == 1
    assert (known.holds_gil is None) == (known.gil_probes == 0)


def test_a_facade_that_would_run_a_pickling_strategy_probes_nothing_on_threads() -> None:
    from ce_parallel.decision import FullMatrixWarning

    # auto without the full matrix runs joblib: whether items hold the GIL changes nothing
    with (
        pytest.warns(FullMatrixWarning),
        facade(ParallelConfig(enabled=True, strategy="auto")) as f,
    ):
        for _ in range(3):
            names = set(f.map(_work_where, range(200)))  # ~60 ms of work
            assert "ce-parallel-probe" not in names
    known = MEMORY.recall(MEMORY.key(_work_where))
    assert known is not None and known.gil_probes == 0 and known.gil_unread_probes == 0


def test_a_map_too_small_to_read_a_probe_recalls_without_probing() -> None:
    from ce_parallel.heuristics import THREAD_PROBE_MIN_WORK_S

    names: set[str] = set()

    def record(x: int) -> int:
        names.add(threading.current_thread().name)
        return x

    MEMORY.remember_fn(record, Measurement(per_item_s=THREAD_PROBE_MIN_WORK_S / 100))
    with facade() as f:
        assert f.map(record, range(20)) == list(range(20))
        assert f.last_decision is not None and f.last_decision.cost_source == "remembered"
        assert not f.last_decision.use_parallel
    assert names == {threading.current_thread().name}
    known = MEMORY.recall(MEMORY.key(record))
    assert known is not None and known.gil_probes == 0


def test_a_users_error_in_a_probe_of_a_remembered_function_names_its_item() -> None:
    from ce_parallel.heuristics import THREAD_PROBE_MIN_WORK_S

    ran: list[int] = []
    lock = threading.Lock()

    def fail_at_13(x: int) -> int:
        with lock:
            ran.append(x)
        if x == 13:
            raise ValueError("bad item")
        return x

    MEMORY.remember_fn(fail_at_13, Measurement(per_item_s=THREAD_PROBE_MIN_WORK_S / 10))
    with facade() as f, pytest.raises(ValueError, match="bad item") as caught:
        f.map(fail_at_13, range(40))
    assert "item 13" in "\n".join(getattr(caught.value, "__notes__", []))
    assert len(ran) == len(set(ran))  # nothing ran twice, and nothing re-ran serially


def test_a_repeat_of_a_known_function_pays_a_share_of_a_cold_start() -> None:
    from ce_parallel.heuristics import AUTO_EXPECTED_MAPS_PER_POOL

    base = {"per_item_s": 3e-4, "requested": "joblib"}
    first = decide(Question(1000, cost_source="pilot", **base), ground(JOBLIB))
    repeat = decide(Question(1000, cost_source="remembered", **base), ground(JOBLIB))
    assert first.start_cost_s == pytest.approx(0.2)
    assert repeat.start_cost_s == pytest.approx(0.2 / AUTO_EXPECTED_MAPS_PER_POOL)
    assert repeat.use_parallel and not first.use_parallel
