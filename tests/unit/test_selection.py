"""Strategy selection against synthetic profiles (one test per rule), the pilot, and auto maps.

Profiles and resources are built by hand: no clock, no environment. Pilot tests check what it
runs and keeps, never how fast anything is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ce_parallel import ParallelConfig, create_executor, heuristics
from ce_parallel.heuristics import (
    AUTO_MIN_PARALLEL_WORK_S,
    PILOT_MAX_FRACTION,
    PROCESS_MAX_TASK_BYTES,
    RUNNER_UP_MARGIN,
)
from ce_parallel.pilot import (
    PilotError,
    PilotResult,
    gil_verdict,
    overlapped,
    pickled_size,
    pilot,
    read_overlap,
    time_first_items,
)
from ce_parallel.resources import CpuBudget, Resources
from ce_parallel.selection import (
    WorkloadProfile,
    _auto_strategy,
    explain_selection,
    select_strategy,
    selectable,
)


def machine(cpus: int = 2) -> Resources:
    return Resources(budget=CpuBudget(cpus, "affinity", {"affinity": cpus}))


def profile(**fields: object) -> WorkloadProfile:
    base: dict[str, object] = {"n_items": 200, "per_item_seconds": 0.005, "cpu_ratio": 1.0}
    base.update(fields)
    return WorkloadProfile(**base)  # type: ignore[arg-type]


# --- one test per rule ----------------------------------------------------------------------


def test_a_budget_of_one_cpu_is_serial() -> None:
    strategy, reason = select_strategy(profile(holds_gil=True), machine(1))
    assert strategy == "sequential"
    assert "budget is 1" in reason and "affinity" in reason


def test_a_single_item_is_serial() -> None:
    assert select_strategy(profile(n_items=1, holds_gil=True), machine())[0] == "sequential"


def test_tiny_work_is_serial() -> None:
    # the tiny workload of evaluation/results/full.md: 10,000 items of ~0.1 us
    strategy, reason = select_strategy(
        profile(n_items=10_000, per_item_seconds=1.1e-7, holds_gil=True), machine()
    )
    assert strategy == "sequential"
    assert "no pool pays off" in reason


def test_work_just_above_the_minimum_can_go_parallel() -> None:
    per_item = 2 * AUTO_MIN_PARALLEL_WORK_S / 100
    chosen = select_strategy(
        profile(n_items=100, per_item_seconds=per_item, holds_gil=False), machine()
    )
    assert chosen[0] == "threads"


def test_gil_bound_python_goes_to_processes() -> None:
    strategy, reason = select_strategy(profile(holds_gil=True), machine())
    assert strategy == "processes"
    assert "hold the GIL" in reason


def test_gil_releasing_work_goes_to_threads() -> None:
    strategy, reason = select_strategy(profile(holds_gil=False), machine())
    assert strategy == "threads"
    assert "release the GIL" in reason


def test_gil_free_work_weighs_processes_too_and_stays_on_threads_within_the_margin() -> None:
    selection = explain_selection(
        profile(holds_gil=False, warm_pools=frozenset(selectable())), machine()
    )
    assert selection.strategy == "threads"
    # processes are estimated (they were excluded for GIL-free items): a run of threads
    # slower than this is judged against it (costing.check_run's runner_up_s)
    assert "processes" in selection.estimates
    # threads measured slower than processes are estimated by more than the margin: processes
    slow = profile(
        holds_gil=False,
        warm_pools=frozenset(selectable()),
        observed=(("threads", 0.005 * 0.75),),
    )
    chosen = explain_selection(slow, machine())
    assert chosen.strategy in ("processes", "joblib")
    assert chosen.estimates["threads"] > RUNNER_UP_MARGIN * chosen.estimates[chosen.strategy]
    # ... and within the margin, threads stay
    close = profile(
        holds_gil=False,
        warm_pools=frozenset(selectable()),
        observed=(("threads", 0.005 * 0.52),),
    )
    assert explain_selection(close, machine()).strategy == "threads"


def test_a_run_is_judged_against_the_best_pool_of_the_other_kind() -> None:
    from ce_parallel.selection import Selection

    times = {"sequential": 1.0, "threads": 0.5, "processes": 0.47, "joblib": 0.48}
    selection = Selection("threads", "", times)
    assert selection.other_kind_s("threads") == 0.47
    # two pools that pickle are not set against each other
    assert selection.other_kind_s("processes") == 0.5
    assert selection.other_kind_s("sequential") is None
    assert Selection("joblib", "", {"joblib": 0.4, "processes": 0.3}).other_kind_s("joblib") is None


@pytest.mark.parametrize("holds_gil", [True, False, None])
def test_large_payloads_never_go_to_processes(holds_gil: bool | None) -> None:
    big = profile(holds_gil=holds_gil, item_bytes=8_000_000)
    hinted = profile(holds_gil=holds_gil, task_size_hint_bytes=PROCESS_MAX_TASK_BYTES)
    for case in (big, hinted):
        strategy, _ = select_strategy(case, machine())
        assert strategy not in ("processes", "joblib")
    assert select_strategy(profile(holds_gil=False, item_bytes=8_000_000), machine())[0] == (
        "threads"
    )


def test_gil_bound_work_with_large_payloads_stays_serial() -> None:
    strategy, reason = select_strategy(profile(holds_gil=True, item_bytes=8_000_000), machine())
    assert strategy == "sequential"
    assert "pickle" in reason


def test_items_that_already_use_every_cpu_stay_serial() -> None:
    # NumPy with default BLAS threads: each item keeps ~2 CPUs busy on a 2-CPU budget
    strategy, reason = select_strategy(profile(cpu_ratio=1.9, holds_gil=None), machine())
    assert strategy == "sequential"
    assert "already keeps" in reason


def test_items_using_two_cpus_on_a_larger_budget_still_parallelise() -> None:
    assert select_strategy(profile(cpu_ratio=2.0, holds_gil=False), machine(8))[0] == "threads"


def test_a_cold_process_pool_must_pay_for_its_share_of_the_start() -> None:
    # 20 ms of GIL-bound work: a warm pool halves it, a cold one is not worth starting
    small = profile(n_items=4, per_item_seconds=0.01, holds_gil=True)
    assert select_strategy(small, machine())[0] == "sequential"
    warm = profile(
        n_items=4, per_item_seconds=0.01, holds_gil=True, warm_pools=frozenset({"processes"})
    )
    assert select_strategy(warm, machine())[0] == "processes"


def test_a_speedup_under_the_margin_stays_serial() -> None:
    # transfer cost eats most of the gain
    heavy = profile(holds_gil=True, item_bytes=PROCESS_MAX_TASK_BYTES - 1, per_item_seconds=0.003)
    selection = explain_selection(heavy, machine())
    assert selection.strategy == "sequential"
    assert "needs" in selection.reason


def test_unmeasured_work_uses_joblib_or_serial() -> None:
    big = WorkloadProfile(n_items=200, work_items=20_000)
    assert select_strategy(big, machine())[0] == "joblib"
    small = WorkloadProfile(n_items=4, work_items=4)
    assert select_strategy(small, machine())[0] == "sequential"


def test_processes_not_allowed_falls_to_joblib() -> None:
    allowed = ("sequential", "threads", "joblib")
    assert _auto_strategy(profile(holds_gil=True), machine(), allowed=allowed)[0] == "joblib"


def test_only_sequential_allowed_is_serial() -> None:
    assert _auto_strategy(profile(holds_gil=True), machine(), allowed=("sequential",))[0] == (
        "sequential"
    )


def test_unknown_allowed_strategy_raises() -> None:
    with pytest.raises(ValueError, match="allowed"):
        explain_selection(profile(), machine(), allowed=("dask",))


def test_selection_is_deterministic_and_the_alias_is_the_same_function() -> None:
    assert select_strategy is _auto_strategy
    p, r = profile(holds_gil=True), machine()
    assert {select_strategy(p, r) for _ in range(5)} == {select_strategy(p, r)}


def test_estimates_are_reported() -> None:
    selection = explain_selection(profile(holds_gil=None), machine())
    assert set(selection.estimates) == {"sequential", "threads", "processes", "joblib"}
    assert selection.estimates["sequential"] == pytest.approx(1.0)


# --- the pilot ------------------------------------------------------------------------------


def double(x: int) -> int:
    return 2 * x


def fail_at_seven(x: int) -> int:
    if x == 7:
        raise KeyError(x)
    return x


class FakeClock:
    """``time`` for the pilot: each item advances it by ``per_item`` seconds (no real timing)."""

    def __init__(self, per_item: float) -> None:
        self.now, self.per_item = 0.0, per_item

    def perf_counter(self) -> float:
        return self.now

    process_time = perf_counter

    def item(self, x: int) -> int:
        self.now += self.per_item
        return 2 * x


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], FakeClock]:
    import ce_parallel.pilot as pilot_module

    def install(per_item: float) -> FakeClock:
        fake = FakeClock(per_item)
        monkeypatch.setattr(pilot_module, "time", fake)
        return fake

    return install


def test_time_first_items_keeps_results_in_order_and_is_bounded(
    clock: Callable[[float], FakeClock],
) -> None:
    items = list(range(1000))
    fake = clock(0.002)  # 2 ms items: the share bounds the pilot, however long the target
    result = time_first_items(fake.item, items, target_s=10.0)
    assert result.done == int(len(items) * PILOT_MAX_FRACTION)
    assert result.results == [2 * x for x in items[: result.done]]
    assert result.per_item_seconds == pytest.approx(0.002)


def test_cheap_items_are_piloted_past_the_share_for_pilot_free_s(
    clock: Callable[[float], FakeClock],
) -> None:
    fake = clock(heuristics.PILOT_FREE_S / 4000)
    assert time_first_items(fake.item, list(range(1000))).done == 1000  # all fit
    fake = clock(heuristics.PILOT_FREE_S / 100)  # the share (50 items) takes half of it
    result = time_first_items(fake.item, list(range(1000)))
    assert 95 <= result.done <= 105 and result.results == [2 * x for x in range(result.done)]


def test_a_slow_first_item_is_left_out_of_the_pilots_cost(
    clock: Callable[[float], FakeClock],
) -> None:
    fake = clock(0.002)
    first = [True]

    def cold_first(x: int) -> int:
        if first.pop() if first else False:
            fake.now += 0.05  # a lazy import, BLAS starting: the process's first item only
        return fake.item(x)

    result = time_first_items(cold_first, list(range(1000)), target_s=10.0)
    assert result.done > 2
    assert result.per_item_seconds == pytest.approx(0.002)
    # a single item is all there is to go by: it counts
    fake = clock(0.002)
    first[:] = [True]
    assert time_first_items(cold_first, list(range(1000)), max_items=1).per_item_seconds == (
        pytest.approx(0.052)
    )
    # a first item faster than the rest is kept (the mean is the larger)
    fake = clock(0.002)
    assert time_first_items(fake.item, list(range(1000)), target_s=10.0).per_item_seconds == (
        pytest.approx(0.002)
    )


def test_pilot_always_runs_at_least_one_item(clock: Callable[[float], FakeClock]) -> None:
    fake = clock(0.002)
    assert time_first_items(fake.item, [5, 6]).results == [10]


def test_pilot_reports_the_failing_item_index() -> None:
    with pytest.raises(PilotError) as info:
        time_first_items(fail_at_seven, list(range(20)), max_items=20, target_s=10.0)
    assert info.value.index == 7
    assert isinstance(info.value.error, KeyError)


def test_pilot_probe_keeps_every_result_in_order() -> None:
    import time

    def wait(x: int) -> int:
        time.sleep(0.002)
        return x

    items = list(range(60))
    result = pilot(wait, items, threads=2)
    assert result.results == items[: result.done]
    assert result.done >= 2
    assert result.thread_scaling is not None and result.holds_gil is not None


# Measurements of 20 items of 5 ms (serial) then on 2 threads, as the pilot takes them. The
# pilot's own timing of real work is in evaluation/pilot_gil.py: a test must not depend on how
# fast or busy this machine is.
SERIAL_QUIET = PilotResult([0], per_item_seconds=0.005, cpu_ratio=1.0)
#: A machine busy with other processes: the serial pilot got 60% of a CPU.
SERIAL_BUSY = PilotResult([0], per_item_seconds=0.008, cpu_ratio=0.6)
#: Items that mostly wait (sleep, I/O): almost no CPU.
SERIAL_WAITING = PilotResult([0], per_item_seconds=0.005, cpu_ratio=0.02)


@pytest.mark.parametrize(
    ("serial", "wall", "cpu", "holds"),
    [
        (SERIAL_QUIET, 0.100, 0.100, True),  # pure Python: two threads keep one CPU busy
        (SERIAL_QUIET, 0.052, 0.102, False),  # zlib: two threads keep two CPUs busy
        (SERIAL_WAITING, 0.051, 0.002, False),  # sleep: twice as fast on two threads
        (SERIAL_WAITING, 0.100, 0.002, True),  # waits that do not overlap (a lock)
        (SERIAL_BUSY, 0.170, 0.100, True),  # pure Python on a busy machine
        (SERIAL_BUSY, 0.110, 0.130, False),  # zlib on a busy machine
    ],
    ids=["pure-python", "zlib", "sleep", "serialised-waits", "busy-pure-python", "busy-zlib"],
)
def test_gil_verdict_tells_gil_bound_from_gil_releasing_work(
    serial: PilotResult, wall: float, cpu: float, holds: bool
) -> None:
    verdict, scaling = gil_verdict(serial, count=20, wall=wall, cpu=cpu, threads=2)
    assert verdict is holds
    assert scaling == pytest.approx(20 * serial.per_item_seconds / wall)


def _notes(start: float, cpu_per_s: float, steps: int, dt: float = 0.001) -> list[Any]:
    """A probe thread's notes: from ``start``, one item per ``dt``, ``cpu_per_s`` CPU a second."""
    return [(start + k * dt, k * dt * cpu_per_s, k) for k in range(steps + 1)]


def test_the_probe_is_read_over_the_time_both_threads_ran() -> None:
    # GIL-free items: each thread keeps its CPU busy, but B starts 4 ms after A (start skew)
    a, b = _notes(0.000, 1.0, 10), _notes(0.004, 1.0, 10)
    wall, cpu, done = read_overlap([a, b], wall=0.014)
    assert wall == pytest.approx(0.006)  # from B's start to A's end
    assert cpu / wall == pytest.approx(2.0)  # both CPUs busy: the whole probe says 1.43
    assert done == pytest.approx(12.0)
    verdict, _ = gil_verdict(PilotResult([], 0.001, 1.0), done, wall, cpu, threads=2)
    assert verdict is False


def test_gil_bound_items_read_over_the_overlap_still_hold_the_gil() -> None:
    # the two threads take turns: each uses half a CPU while both run
    a, b = _notes(0.0, 0.5, 10, dt=0.002), _notes(0.0005, 0.5, 10, dt=0.002)
    wall, cpu, done = read_overlap([a, b], wall=0.0205)
    assert cpu / wall == pytest.approx(1.0)
    verdict, _ = gil_verdict(PilotResult([], 0.001, 1.0), done, wall, cpu, threads=2)
    assert verdict is True


def test_a_probe_whose_threads_barely_overlap_is_read_whole() -> None:
    a, b = _notes(0.0, 1.0, 10), _notes(0.0095, 1.0, 10)
    assert read_overlap([a, b], wall=0.02) == pytest.approx((0.02, 0.02, 20.0))
    assert not overlapped([a, b])  # and says so: such a probe may not vote
    assert overlapped([a, _notes(0.004, 1.0, 10)])


def test_probes_that_could_not_be_read_give_up_after_the_votes_a_verdict_would_take() -> None:
    from ce_parallel.costing import _wants_probe
    from ce_parallel.costs import GIL_PROBE_VOTES, Measurement

    never = Measurement(per_item_s=0.001)
    assert _wants_probe(never)
    unread = Measurement(per_item_s=0.001, gil_unread_probes=GIL_PROBE_VOTES - 1)
    assert _wants_probe(unread)
    # as many unread probes as a verdict takes votes: left assumed to hold the GIL
    assert not _wants_probe(Measurement(per_item_s=0.001, gil_unread_probes=GIL_PROBE_VOTES))
    # a vote that found the GIL released settles it; one that found it held does not
    assert not _wants_probe(Measurement(per_item_s=0.001, holds_gil=False, gil_probes=1))
    assert _wants_probe(
        Measurement(per_item_s=0.001, holds_gil=True, gil_probes=1, gil_bound_probes=1)
    )


def test_pilot_trusts_a_given_gil_answer() -> None:
    result = pilot(double, list(range(100)), holds_gil=True)
    assert result.holds_gil is True and result.thread_scaling is None


def test_pickled_size_counts_array_buffers_without_copying() -> None:
    np = pytest.importorskip("numpy")
    size = pickled_size(np.zeros(1_000_000))
    assert size is not None and size >= 8_000_000
    assert pickled_size(lambda x: x) is None


# --- the auto executor (correctness only; speed is measured in evaluation/) ----------------


def slow_square(x: int) -> int:
    total = 0
    for _ in range(2000):
        total += 1
    return x * x + total - 2000


@pytest.mark.parametrize("fn", [double, slow_square])
def test_auto_map_equals_the_serial_loop_and_reports_its_choice(fn: object) -> None:
    items = list(range(300))
    with create_executor(ParallelConfig(strategy="auto", max_workers=2)) as executor:
        first = executor.map(fn, items)  # type: ignore[arg-type]
        second = executor.map(fn, items)  # type: ignore[arg-type]
        assert executor.last_strategy in ("sequential", "threads", "processes", "joblib")
        assert executor.last_reason
    expected = [fn(x) for x in items]  # type: ignore[operator]
    assert first == expected and second == expected


def sleep_then_fail_at_forty(x: int) -> int:
    import time

    time.sleep(0.002)
    if x == 40:
        raise KeyError(x)
    return x


@pytest.mark.parametrize("fn", [fail_at_seven, sleep_then_fail_at_forty])
def test_auto_reports_the_failing_index_in_the_whole_input(fn: object) -> None:
    config = ParallelConfig(strategy="auto", max_workers=2)
    with create_executor(config) as executor, pytest.raises(KeyError) as info:
        executor.map(fn, list(range(60)))  # type: ignore[arg-type]
    expected = 7 if fn is fail_at_seven else 40
    assert info.value.ce_parallel_item_index == expected  # type: ignore[attr-defined]
    notes = getattr(info.value, "__notes__", [])
    assert any(f"item {expected} " in note for note in notes)


def test_auto_emits_a_decision_record() -> None:
    records: list[tuple[str, dict]] = []
    config = ParallelConfig(strategy="auto", telemetry=lambda e, p: records.append((e, p)))
    with create_executor(config) as executor:
        executor.map(double, list(range(10)))
        chose = executor.last_strategy
    decisions = [p for e, p in records if e == "decision"]
    assert decisions and decisions[-1]["source"] == "auto"
    # the gate's record, with auto's choice and estimates beside it; what it chose rests on
    # the pilot's timing of this machine, so the record must match it, whatever it is
    assert decisions[-1]["strategy"] == chose
    assert decisions[-1]["n_instances"] == 10
    assert decisions[-1]["cost_source"] == "pilot"


def test_auto_remembers_measurements_without_keeping_the_function_alive() -> None:
    import functools
    import gc
    import weakref

    from ce_parallel import ParallelConfig, create_executor

    class Model:
        def predict(self, x: int) -> int:
            return 2 * x

    def apply(model: Model, x: int) -> int:
        return model.predict(x)

    model = Model()
    alive = weakref.ref(model)
    fn = functools.partial(apply, model)
    from ce_parallel.costs import MEMORY

    with create_executor(ParallelConfig(enabled=True, strategy="auto", full_matrix=True)) as ex:
        assert ex.map(fn, range(50)) == [2 * x for x in range(50)]
        assert len(MEMORY) == 1
        # a new partial of the same model is the same work: remembered, not piloted again
        assert MEMORY.recall(MEMORY.key(functools.partial(apply, model))) is not None
        del fn, model
        gc.collect()
        assert alive() is None
        assert len(MEMORY) == 0


def _sleep_then_fail_at_ten(x: int) -> int:
    import time

    time.sleep(0.002)
    if x == 10:
        raise KeyError(x)
    return x


def test_a_failure_in_the_thread_probe_names_its_index_in_the_whole_input() -> None:
    # the serial part runs at most 5% of the 200 items (0-9): item 10 fails on a probe thread,
    # which runs a slice of the input, and the index still counts from the start
    with pytest.raises(PilotError) as info:
        pilot(_sleep_then_fail_at_ten, list(range(200)), threads=2)
    assert info.value.index == 10


def pid_of(x: int) -> tuple[int, int]:
    import os

    return x, os.getpid()


def test_auto_start_pools_warms_what_it_may_choose() -> None:
    import os

    from ce_parallel.costs import MEMORY, Measurement
    from ce_parallel.errors import ConfigurationError

    # a remembered cost (no pilot runs here): 16 GIL-bound items of 50 ms pay on warm processes
    MEMORY.remember_fn(pid_of, Measurement(per_item_s=0.05, items=16, holds_gil=True))
    with create_executor(ParallelConfig(strategy="auto", max_workers=2)) as executor:
        with pytest.raises(ConfigurationError, match="strategy"):
            executor.start_pools(["warp-drive"])
        pools = executor.start_pools(["processes"])
        assert list(pools) == ["processes"] and not pools["processes"].closed
        results = executor.map(pid_of, list(range(16)))
        assert executor.last_strategy == "processes"
    assert [x for x, _ in results] == list(range(16))
    # the pool was up: no item ran in the caller while it started
    assert os.getpid() not in {pid for _, pid in results}
    assert pools["processes"].closed  # shut down with auto


def test_a_probe_of_a_function_learnt_without_a_cpu_clock_is_judged_by_what_it_kept_busy() -> None:
    from ce_parallel.costing import serial_cpu_ratio

    assert serial_cpu_ratio(0.8, wall_s=0.01, cpu_s=0.0) == 0.8  # the pilot's, when measured
    # threads that used ~1 CPU between them: CPU-bound items, holding the GIL
    ratio = serial_cpu_ratio(None, wall_s=0.01, cpu_s=0.0101)
    assert ratio == 1.0
    assert gil_verdict(PilotResult([], 0.003, ratio), 10, 0.01, 0.0101, threads=2)[0] is True
    # threads that mostly waited (sleep, I/O): judged by their wall-clock speed-up
    ratio = serial_cpu_ratio(None, wall_s=0.01, cpu_s=0.0002)
    assert ratio == 0.0
    assert gil_verdict(PilotResult([], 0.002, ratio), 10, 0.01, 0.0002, threads=2)[0] is False
