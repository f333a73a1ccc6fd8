"""The ablation: every canonical workload under every strategy and the baselines users pick.

Runners are interleaved across repeats (A B C A B C ...) so that machine drift hits all alike.
Warm runners start their pool before timing (and run one untimed warm-up map) and shut it down
after the whole run; cold runners time creation + first map + shutdown. Every timed result is
compared with the serial loop's, so a fast wrong answer is reported as ``correct: false``.

A runner that cannot be built (a strategy not available in this install, a missing backend)
or that raises is recorded with its error and the run continues.

Entry points: ``main(argv)`` (``ce-parallel bench``, ``python evaluation/parallel_ablation.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .workloads import WORKLOAD_NAMES, WORKLOADS, Case, Workload

if TYPE_CHECKING:
    from ce_parallel.config import StrategyName

#: Schema version of the JSON document; bump when a key changes meaning.
SCHEMA_VERSION = 1
#: Repeats per runner x workload in each mode.
REPEATS: dict[str, int] = {"tiny": 2, "quick": 3, "full": 5}
#: Workloads on which cold-start runners are measured (``None``: all). A cold start is dominated
#: by pool creation, which the tiny workload isolates; the full run adds a coarse CPU workload
#: (does the start amortise?) and a scikit-learn one (fresh workers pay its imports). Every
#: workload would add ~5 s per repeat for the dask cluster alone.
COLD_WORKLOADS: dict[str, tuple[str, ...] | None] = {
    "tiny": ("tiny",),
    "quick": ("tiny",),
    "full": ("tiny", "cpu_coarse", "perturbation"),
}
#: Chunks per worker that the concurrent.futures and loky baselines use: the "good chunk size"
#: of a careful user (n / 8 on 2 workers), which measured best for a reused process pool.
BASELINE_CHUNKS_PER_WORKER = 4
#: Idle-worker timeout of the loky baseline (joblib's value; loky's own default is 10 s).
LOKY_IDLE_TIMEOUT_S = 300
#: ce-parallel strategies measured as fixed choices (``auto`` is measured on its own).
FIXED_STRATEGIES: tuple[str, ...] = ("sequential", "threads", "processes", "joblib", "dask")
#: Runners that stand for what a user would use instead of ce-parallel.
BASELINES: tuple[str, ...] = ("joblib.Parallel", "cf:threads", "cf:processes", "loky")
#: Relative and absolute tolerance when comparing float results with the serial loop's.
FLOAT_RTOL = 1e-7
FLOAT_ATOL = 1e-12
# Targets of the closing report (reported, never asserted).
TARGET_TINY_VS_JOBLIB = 3.0
TARGET_COARSE_PROCESS_SPEEDUP = 1.8
TARGET_FACADE_SERIAL_OVERHEAD = 1.05
TARGET_AUTO_REGRET = 1.15


# --- runners --------------------------------------------------------------------------------


@dataclass
class Runner:
    """One way of running ``[fn(x) for x in items]``.

    ``start`` (untimed) returns the state ``run`` uses, e.g. a warm pool; ``run(state, fn,
    items)`` is timed; ``stop(state)`` releases what ``start`` made. ``choice(state)`` reports
    what an adaptive runner picked for the last run.
    """

    name: str
    kind: str  # serial | ce | ce-cold | auto | auto-cold | facade | baseline
    run: Callable[[Any, Callable[[Any], Any], list[Any]], list[Any]]
    start: Callable[[], Any] = lambda: None
    stop: Callable[[Any], None] = lambda state: None
    choice: Callable[[Any], str | None] = lambda state: None
    cold: bool = False


def _serial_run(state: Any, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [fn(x) for x in items]


def _warmup_items(workers: int) -> list[int]:
    return list(range(max(2, workers) * 8))


def warm_imports(x: int) -> int:
    """Warm-up item: import what the workloads import, so no timed run pays a worker's imports.

    Without it the first timed map of a process pool on a scikit-learn workload pays ~1-2 s of
    imports in every worker, which is a one-off cost of the process, not of the pool.
    """
    for module in ("numpy", "sklearn.ensemble", "sklearn.isotonic"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    return x


class _ChoiceRecorder:
    """Telemetry callback that remembers the strategy of the last ``run`` record."""

    def __init__(self) -> None:
        self.last: str | None = None

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        if event == "run" and isinstance(payload, dict):
            strategy = payload.get("strategy") or payload.get("chosen")
            if strategy is not None:
                self.last = str(strategy)


@dataclass
class _CeState:
    executor: Any
    recorder: _ChoiceRecorder


def _ce_config(strategy: str, recorder: _ChoiceRecorder) -> Any:
    from ce_parallel.config import ParallelConfig

    return ParallelConfig(
        enabled=True, strategy=cast("StrategyName", strategy), full_matrix=True, telemetry=recorder
    )


def _ce_start(strategy: str, workers: int) -> Callable[[], _CeState]:
    def start() -> _CeState:
        from ce_parallel.executor import create_executor

        recorder = _ChoiceRecorder()
        executor = create_executor(_ce_config(strategy, recorder))
        try:
            executor.map(warm_imports, _warmup_items(workers))
        except BaseException:
            executor.shutdown()
            raise
        return _CeState(executor, recorder)

    return start


def _ce_run(state: _CeState, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return state.executor.map(fn, items)


def _ce_stop(state: _CeState) -> None:
    state.executor.shutdown()


def _ce_choice(state: Any) -> str | None:
    if state is None:
        return None
    executor = state.executor
    for attribute in ("last_strategy", "chosen_strategy", "last_choice", "chosen"):
        value = getattr(executor, attribute, None)
        if isinstance(value, str):
            return value
        name = getattr(value, "name", None)
        if isinstance(name, str):
            return name
    return state.recorder.last


@dataclass
class _ColdState:
    recorder: _ChoiceRecorder = field(default_factory=_ChoiceRecorder)
    executor: Any = None


def _ce_cold_run(strategy: str) -> Callable[[Any, Callable[[Any], Any], list[Any]], list[Any]]:
    def run(state: _ColdState, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        from ce_parallel.executor import create_executor

        executor = create_executor(_ce_config(strategy, state.recorder))
        try:
            state.executor = executor
            return list(executor.map(fn, items))
        finally:
            executor.shutdown()

    return run


def _facade_start(strategy: str | None) -> Callable[[], Any]:
    def start() -> Any:
        from ce_parallel.config import ParallelConfig
        from ce_parallel.facade import ParallelFacade

        config = (
            ParallelConfig()
            if strategy is None
            else ParallelConfig(enabled=True, strategy=cast("StrategyName", strategy))
        )
        facade = ParallelFacade(config)
        facade.map(warm_imports, _warmup_items(2))
        return facade

    return start


def _facade_run(state: Any, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return state.map(fn, items)


def _facade_stop(state: Any) -> None:
    for method in ("shutdown", "close"):
        closer = getattr(state, method, None)
        if callable(closer):
            closer()
            return


def _facade_choice(state: Any) -> str | None:
    decision = getattr(state, "last_decision", None)
    if decision is None:
        return None
    strategy = getattr(decision, "strategy", None)
    use = getattr(decision, "use_parallel", None)
    if use is False:
        return "sequential"
    return str(strategy) if strategy is not None else None


def _baseline_chunksize(n: int, workers: int) -> int:
    return max(1, math.ceil(n / (workers * BASELINE_CHUNKS_PER_WORKER)))


def _joblib_start(workers: int) -> Callable[[], Any]:
    def start() -> Any:
        _joblib_run(workers, warm_imports, _warmup_items(workers))
        return workers

    return start


def _joblib_run(state: Any, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    from joblib import Parallel, delayed

    return list(Parallel(n_jobs=state)(delayed(fn)(x) for x in items))


def _joblib_stop(state: Any) -> None:
    # joblib keeps its loky workers (and their memmap folders) until interpreter exit; a
    # benchmark releases them explicitly so nothing outlives the run.
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def _pool_start(factory: Callable[[], Any], workers: int) -> Callable[[], Any]:
    def start() -> Any:
        pool = factory()
        list(pool.map(warm_imports, _warmup_items(workers)))
        return pool

    return start


def _pool_run(workers: int) -> Callable[[Any, Callable[[Any], Any], list[Any]], list[Any]]:
    def run(pool: Any, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(pool.map(fn, items, chunksize=_baseline_chunksize(len(items), workers)))

    return run


def _pool_stop(pool: Any) -> None:
    pool.shutdown(wait=True)


def _loky_factory(workers: int) -> Callable[[], Any]:
    def factory() -> Any:
        from loky import get_reusable_executor

        # loky's default idle timeout (10 s) lets workers exit between interleaved runs, which
        # would time a respawn instead of dispatch; joblib keeps them for 300 s, and so do we.
        return get_reusable_executor(max_workers=workers, timeout=LOKY_IDLE_TIMEOUT_S)

    return factory


def _thread_pool_factory(workers: int) -> Callable[[], Any]:
    def factory() -> Any:
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor(max_workers=workers)

    return factory


def _process_pool_factory(workers: int) -> Callable[[], Any]:
    def factory() -> Any:
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=workers)

    return factory


def build_runners(workers: int) -> list[Runner]:
    """Every runner of the ablation, in the order they are interleaved."""
    runners = [Runner("serial", "serial", _serial_run)]
    for strategy in FIXED_STRATEGIES:
        runners.append(
            Runner(f"ce:{strategy}", "ce", _ce_run, _ce_start(strategy, workers), _ce_stop)
        )
    runners.append(
        Runner("ce:auto", "auto", _ce_run, _ce_start("auto", workers), _ce_stop, _ce_choice)
    )
    runners.append(
        Runner(
            "facade:joblib",
            "facade",
            _facade_run,
            _facade_start("joblib"),
            _facade_stop,
            _facade_choice,
        )
    )
    runners.append(
        Runner(
            "facade:serial",
            "facade",
            _facade_run,
            _facade_start(None),
            _facade_stop,
            _facade_choice,
        )
    )
    runners.append(
        Runner("joblib.Parallel", "baseline", _joblib_run, _joblib_start(workers), _joblib_stop)
    )
    runners.append(
        Runner(
            "cf:threads",
            "baseline",
            _pool_run(workers),
            _pool_start(_thread_pool_factory(workers), workers),
            _pool_stop,
        )
    )
    runners.append(
        Runner(
            "cf:processes",
            "baseline",
            _pool_run(workers),
            _pool_start(_process_pool_factory(workers), workers),
            _pool_stop,
        )
    )
    runners.append(
        Runner(
            "loky",
            "baseline",
            _pool_run(workers),
            _pool_start(_loky_factory(workers), workers),
            _pool_stop_loky,
        )
    )
    for strategy in (*FIXED_STRATEGIES, "auto"):
        kind = "auto-cold" if strategy == "auto" else "ce-cold"
        runners.append(
            Runner(
                f"ce:{strategy}:cold",
                kind,
                _ce_cold_run(strategy),
                _ColdState,
                choice=lambda state: _ce_choice(state) if state.executor is not None else None,
                cold=True,
            )
        )
    return runners


def _pool_stop_loky(pool: Any) -> None:
    # The reusable executor is shared process-wide; shutting it down is what a script does last.
    pool.shutdown(wait=True, kill_workers=True)


RUNNER_NAMES: tuple[str, ...] = tuple(r.name for r in build_runners(2))


# --- comparing results ----------------------------------------------------------------------


def results_equal(expected: Any, got: Any) -> bool:
    """Whether ``got`` equals ``expected``: exact for ints and strings, close for floats/arrays."""
    if isinstance(expected, float) or isinstance(got, float):
        try:
            return math.isclose(float(expected), float(got), rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL)
        except (TypeError, ValueError):
            return False
    if type(expected).__module__ == "numpy" or type(got).__module__ == "numpy":
        import numpy as np

        a, b = np.asarray(expected), np.asarray(got)
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=FLOAT_RTOL, atol=FLOAT_ATOL))
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(got, (list, tuple))
            and len(expected) == len(got)
            and all(results_equal(e, g) for e, g in zip(expected, got, strict=True))
        )
    return bool(expected == got)


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Cell:
    """The measurements of one runner on one workload."""

    times: list[float] = field(default_factory=list)
    correct: bool = True
    error: str | None = None
    choices: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def as_dict(self, serial_median: float | None) -> dict[str, Any]:
        """Statistics for the JSON document (``None`` where nothing was measured)."""
        out: dict[str, Any] = {
            "repeats": len(self.times),
            "times_s": [round(t, 6) for t in self.times],
            "min_s": min(self.times) if self.times else None,
            "median_s": statistics.median(self.times) if self.times else None,
            "max_s": max(self.times) if self.times else None,
            "correct": self.correct if self.times else None,
            "error": self.error,
        }
        median = out["median_s"]
        out["speedup_vs_serial"] = serial_median / median if serial_median and median else None
        if self.choices:
            out["choices"] = sorted(set(self.choices))
        if self.reasons:
            out["reasons"] = sorted(set(self.reasons))
        return out


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _blas_cap(threads: int) -> Iterator[dict[str, Any]]:
    """Cap numeric-library threads in this process and in pools started from it.

    ``threads <= 0`` leaves the library defaults. Yields the BLAS facts to record.
    """
    facts: dict[str, Any] = {"requested_threads": threads if threads > 0 else "default"}
    saved: dict[str, str | None] = {}
    limiter: Any = None
    if threads > 0:
        from ce_parallel.resources import numeric_thread_env

        for name, value in numeric_thread_env(threads).items():
            saved[name] = os.environ.get(name)
            os.environ[name] = value  # inherited by spawned workers before they import numpy
        try:
            from threadpoolctl import threadpool_limits

            limiter = threadpool_limits(limits=threads)
        except ImportError:
            limiter = None
    try:
        with contextlib.suppress(ImportError):
            from threadpoolctl import threadpool_info

            facts["threadpools"] = [
                {k: info.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
                for info in threadpool_info()
            ]
        yield facts
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _interleave(runners: Sequence[Runner], repeat: int) -> list[Runner]:
    # Rotate the order each repeat so that no runner always follows the same neighbour.
    shift = repeat % len(runners) if runners else 0
    return list(runners[shift:]) + list(runners[:shift])


def measure(
    workloads: Sequence[Workload],
    runners: Sequence[Runner],
    *,
    mode: str,
    repeats: int,
    cold_workloads: tuple[str, ...] | None,
) -> tuple[dict[str, dict[str, Cell]], dict[str, dict[str, Any]]]:
    """Run every runner on every workload ``repeats`` times, interleaved.

    Returns the cells (workload -> runner -> Cell) and per-workload facts (size, skip reason).
    """
    cells: dict[str, dict[str, Cell]] = {}
    facts: dict[str, dict[str, Any]] = {}
    states: dict[str, Any] = {}
    start_errors: dict[str, str] = {}
    for runner in runners:
        if runner.cold:
            with contextlib.suppress(Exception):
                states[runner.name] = runner.start()
            continue
        t0 = time.perf_counter()
        try:
            states[runner.name] = runner.start()
            _progress(f"  started {runner.name} ({time.perf_counter() - t0:.2f} s)")
        except Exception as exc:
            start_errors[runner.name] = _short_error(exc)
            _progress(f"  {runner.name} unavailable: {start_errors[runner.name]}")
    try:
        for index, workload in enumerate(workloads, 1):
            missing = workload.missing()
            if missing:
                reason = (
                    f"skipped: {', '.join(missing)} not installed (pip install ce-parallel[bench])"
                )
                facts[workload.name] = {"description": workload.description, "skipped": reason}
                _progress(f"[{index}/{len(workloads)}] {workload.name}: {reason}")
                continue
            case = workload.case(mode)
            expected = _serial_run(None, case.fn, case.items)  # reference, and warms imports
            facts[workload.name] = {
                "description": workload.description,
                "size": case.size,
                "items": len(case.items),
            }
            active = [
                r
                for r in runners
                if not r.cold or cold_workloads is None or workload.name in cold_workloads
            ]
            row = {r.name: Cell() for r in active}
            for r in active:
                if r.name in start_errors:
                    row[r.name].error = start_errors[r.name]
            cells[workload.name] = row
            for repeat in range(repeats):
                line = []
                for runner in _interleave(active, repeat):
                    cell = row[runner.name]
                    if cell.error is not None:
                        continue
                    line.append(
                        _measure_once(runner, states.get(runner.name), case, expected, cell)
                    )
                _progress(
                    f"[{index}/{len(workloads)}] {workload.name} repeat {repeat + 1}/{repeats}: "
                    + " ".join(line)
                )
    finally:
        for runner in runners:
            if runner.name in states and not runner.cold:
                try:
                    runner.stop(states[runner.name])
                except Exception as exc:
                    _progress(f"  stopping {runner.name} failed: {_short_error(exc)}")
    return cells, facts


#: A warm measurement shorter than this is repeated until the calls fill it (mean recorded).
MIN_TIMED_S = 0.05
#: ... but with at most this many calls per measurement.
MAX_INNER_CALLS = 200


def _measure_once(runner: Runner, state: Any, case: Case, expected: list[Any], cell: Cell) -> str:
    t0 = time.perf_counter()
    try:
        got = runner.run(state, case.fn, case.items)
    except Exception as exc:
        cell.error = _short_error(exc)
        _progress(f"  {runner.name} raised {cell.error}")
        if os.environ.get("CE_PARALLEL_BENCH_TRACEBACK"):
            traceback.print_exc()
        return f"{runner.name}=ERR"
    elapsed = time.perf_counter() - t0
    if not results_equal(expected, got):
        cell.correct = False
    if not runner.cold and 0 < elapsed < MIN_TIMED_S:
        # one sub-millisecond call is mostly timer and scheduler noise: time enough calls to
        # fill MIN_TIMED_S and record their mean, as timeit's autorange does
        calls = min(MAX_INNER_CALLS, math.ceil(MIN_TIMED_S / elapsed))
        t0 = time.perf_counter()
        for _ in range(calls):
            got = runner.run(state, case.fn, case.items)
        elapsed = (time.perf_counter() - t0) / calls
        if not results_equal(expected, got):
            cell.correct = False
    cell.times.append(elapsed)
    choice = runner.choice(state)
    if choice:
        cell.choices.append(choice)
        reason = getattr(getattr(state, "executor", None), "last_reason", None)
        if isinstance(reason, str):
            cell.reasons.append(reason)
    return f"{runner.name}={elapsed:.3f}"


# --- analysis -------------------------------------------------------------------------------


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))
    except Exception:
        return None


def machine_facts(blas: dict[str, Any]) -> dict[str, Any]:
    """The facts that make a result reproducible: CPU budget, platform, library versions."""
    import multiprocessing

    from ce_parallel.resources import cpu_budget

    budget = cpu_budget()
    return {
        "cpu_budget": budget.count,
        "cpu_budget_source": budget.limited_by,
        "cpu_budget_sources": budget.sources,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "start_method": multiprocessing.get_start_method(allow_none=True),
        "blas": blas,
        # other processes on the machine skew timings; the load says how quiet it was
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {
            name: _version(name)
            for name in (
                "ce_parallel",
                "joblib",
                "loky",
                "cloudpickle",
                "numpy",
                "sklearn",
                "dask",
                "distributed",
                "matplotlib",
            )
        },
    }


def _median(cell: dict[str, Any] | None) -> float | None:
    if not cell or not cell.get("correct"):
        return None
    value = cell.get("median_s")
    return float(value) if value else None


def analyse(cells: dict[str, dict[str, Cell]]) -> dict[str, Any]:
    """Per workload: runner statistics, the best baseline, ratios, and auto's regret."""
    results: dict[str, Any] = {}
    for workload, row in cells.items():
        serial_cell = row.get("serial")
        serial = statistics.median(serial_cell.times) if serial_cell and serial_cell.times else None
        runners = {name: cell.as_dict(serial) for name, cell in row.items()}
        baselines = {b: _median(runners.get(b)) for b in BASELINES}
        measured = {b: t for b, t in baselines.items() if t}
        best_baseline = min(measured, key=measured.__getitem__) if measured else None
        for stats in runners.values():
            median = stats["median_s"]
            stats["ratio_vs_best_baseline"] = (
                median / measured[best_baseline] if best_baseline and median else None
            )
        fixed = {s: _median(runners.get(f"ce:{s}")) for s in FIXED_STRATEGIES}
        fixed_ok = {s: t for s, t in fixed.items() if t}
        best_fixed = min(fixed_ok, key=fixed_ok.__getitem__) if fixed_ok else None
        auto = runners.get("ce:auto", {})
        auto_median = _median(auto)
        results[workload] = {
            "serial_median_s": serial,
            "best_baseline": best_baseline,
            "best_baseline_median_s": measured.get(best_baseline) if best_baseline else None,
            "best_fixed_strategy": best_fixed,
            "best_fixed_median_s": fixed_ok.get(best_fixed) if best_fixed else None,
            "auto": {
                "chose": auto.get("choices"),
                "reasons": auto.get("reasons"),
                "median_s": auto_median,
                "regret": auto_median / fixed_ok[best_fixed]
                if auto_median and best_fixed
                else None,
                "error": auto.get("error"),
            },
            "runners": runners,
        }
    return results


def _check(value: float | None, target: float, smaller_is_better: bool) -> dict[str, Any]:
    if value is None:
        return {"value": None, "target": target, "met": None}
    met = value <= target if smaller_is_better else value >= target
    return {"value": round(value, 3), "target": target, "met": met}


def evaluate_targets(results: dict[str, Any]) -> dict[str, Any]:
    """The closing-report targets, computed from the medians (reported, never asserted)."""

    def median(workload: str, runner: str) -> float | None:
        return _median(results.get(workload, {}).get("runners", {}).get(runner))

    targets: dict[str, Any] = {}
    loky_tiny = median("tiny", "loky")
    joblib_tiny = median("tiny", "joblib.Parallel")
    for strategy in ("processes", "joblib"):
        ours = median("tiny", f"ce:{strategy}")
        targets[f"tiny_{strategy}_vs_loky"] = {
            "description": f"tiny: ce:{strategy} time / loky reusable executor time (<= 1)",
            **_check(ours / loky_tiny if ours and loky_tiny else None, 1.0, True),
        }
        targets[f"tiny_{strategy}_vs_joblib_parallel"] = {
            "description": f"tiny: joblib.Parallel time / ce:{strategy} time (>= 3)",
            **_check(
                joblib_tiny / ours if ours and joblib_tiny else None, TARGET_TINY_VS_JOBLIB, False
            ),
        }
    serial_coarse = median("cpu_coarse", "serial")
    process_coarse = median("cpu_coarse", "ce:processes")
    targets["coarse_processes_speedup"] = {
        "description": "cpu_coarse: serial time / ce:processes time (>= 1.8 on 2 cores)",
        **_check(
            serial_coarse / process_coarse if serial_coarse and process_coarse else None,
            TARGET_COARSE_PROCESS_SPEEDUP,
            False,
        ),
    }
    serial_tiny = median("tiny", "serial")
    facade_tiny = median("tiny", "facade:serial")
    targets["facade_serial_overhead_tiny"] = {
        "description": "tiny: facade in serial mode time / plain loop time (<= 1.05)",
        **_check(
            facade_tiny / serial_tiny if facade_tiny and serial_tiny else None,
            TARGET_FACADE_SERIAL_OVERHEAD,
            True,
        ),
    }
    regrets = {w: r["auto"]["regret"] for w, r in results.items() if r["auto"]["regret"]}
    worst = max(regrets, key=regrets.__getitem__) if regrets else None
    targets["auto_regret"] = {
        "description": "every workload: auto time / best fixed strategy time (<= 1.15)",
        "per_workload": {w: round(v, 3) for w, v in regrets.items()},
        "worst_workload": worst,
        **_check(regrets[worst] if worst else None, TARGET_AUTO_REGRET, True),
    }
    return targets


# --- reporting ------------------------------------------------------------------------------


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def _fmt_load(load: list[float] | None) -> str:
    return "unknown" if not load else f"{load[0]:.1f}"


def _fmt_cell(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    if stats.get("error"):
        return "ERR"
    if stats.get("correct") is False:
        return "WRONG"
    speedup = stats.get("speedup_vs_serial")
    return "-" if speedup is None else f"{speedup:.2f}x"


def markdown_summary(document: dict[str, Any]) -> str:
    """The results as Markdown: speed-ups, cold starts, auto's choices, targets, errors."""
    facts = document["machine"]
    results = document["results"]
    warm = [n for n in document["runners"] if not n.endswith(":cold") and n != "serial"]
    cold = [n for n in document["runners"] if n.endswith(":cold")]
    lines = [
        f"## ce-parallel ablation: {document['mode']} mode, {document['repeats']} repeats",
        "",
        f"CPU budget {facts['cpu_budget']} (limited by {facts['cpu_budget_source']}), "
        f"Python {facts['python']}, {facts['platform']}, BLAS threads "
        f"{facts['blas']['requested_threads']}, 1-min load average "
        f"{_fmt_load(facts.get('load_average_start'))} at start, "
        f"{_fmt_load(facts.get('load_average_end'))} at end. "
        "Speed-up = serial median / runner median (higher is better); warm pools; a warm "
        f"call under {MIN_TIMED_S * 1000:.0f} ms is timed as the mean of repeated calls; "
        "ERR = raised, WRONG = results differ from serial.",
        "",
        "| workload | size | serial | " + " | ".join(warm) + " | auto chose | auto regret |",
        "|---|---|---:|" + "---:|" * len(warm) + "---|---:|",
    ]
    for workload, facts_w in document["workloads"].items():
        if "skipped" in facts_w:
            lines.append(f"| {workload} | {facts_w['skipped']} |" + " |" * (len(warm) + 3))
            continue
        result = results[workload]
        runners = result["runners"]
        auto = result["auto"]
        regret = auto["regret"]
        lines.append(
            f"| {workload} | {facts_w['size']} | {_fmt_seconds(result['serial_median_s'])} | "
            + " | ".join(_fmt_cell(runners.get(n)) for n in warm)
            + f" | {', '.join(auto['chose'] or []) or '-'} | "
            + (f"{regret:.2f}" if regret else "-")
            + " |"
        )
    cold_rows = [
        (w, r["runners"]) for w, r in results.items() if any(n in r["runners"] for n in cold)
    ]
    if cold_rows:
        lines += [
            "",
            "Cold start (create + first map + shutdown), median time:",
            "",
            "| workload | " + " | ".join(cold) + " |",
            "|---|" + "---:|" * len(cold),
        ]
        for workload, runners in cold_rows:
            cells = []
            for name in cold:
                stats = runners.get(name)
                if stats is None:
                    cells.append("-")
                elif stats.get("error"):
                    cells.append("ERR")
                else:
                    wrong = " WRONG" if stats.get("correct") is False else ""
                    cells.append(_fmt_seconds(stats.get("median_s")) + wrong)
            lines.append(f"| {workload} | " + " | ".join(cells) + " |")
    lines += ["", "Targets (reported, not asserted):", ""]
    for target in document["targets"].values():
        met = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        lines.append(f"- {target['description']}: {target['value']} -> {met}")
    errors = sorted(
        {
            (runner, stats["error"])
            for result in results.values()
            for runner, stats in result["runners"].items()
            if stats.get("error")
        }
    )
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- {runner}: {error}" for runner, error in errors]
    return "\n".join(lines) + "\n"


def plot_speedups(document: dict[str, Any], path: str) -> None:
    """A bar chart of speed-up vs serial per workload and warm runner (log scale), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = document["results"]
    workloads = list(results)
    runners = [n for n in document["runners"] if not n.endswith(":cold") and n != "serial"]
    width = 0.8 / max(1, len(runners))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.6 * len(workloads)), 5.0))
    cmap = plt.get_cmap("tab20")
    for i, runner in enumerate(runners):
        xs, ys = [], []
        for j, workload in enumerate(workloads):
            stats = results[workload]["runners"].get(runner)
            speedup = stats.get("speedup_vs_serial") if stats and stats.get("correct") else None
            if speedup:
                xs.append(j + (i - (len(runners) - 1) / 2) * width)
                ys.append(speedup)
        if ys:  # a runner that never produced a correct result gets no legend entry
            ax.bar(xs, ys, width=width, label=runner, color=cmap(i % 20))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=20)
    ax.set_ylabel("speed-up vs serial loop (log)")
    facts = document["machine"]
    ax.set_title(
        f"ce-parallel ablation ({document['mode']}, {facts['cpu_budget']} CPUs, "
        f"Python {facts['python']})"
    )
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- command line ---------------------------------------------------------------------------


def _parse_list(raw: str | None, accepted: Sequence[str], what: str) -> list[str] | None:
    if raw is None:
        return None
    names = [p.strip() for p in raw.split(",") if p.strip()]
    unknown = [n for n in names if n not in accepted]
    if unknown:
        raise SystemExit(
            f"--{what} {','.join(unknown)} is not accepted; expected a comma list of "
            + ", ".join(accepted)
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``ce-parallel bench``."""
    parser = argparse.ArgumentParser(
        prog="ce-parallel bench",
        description="Measure every ce-parallel strategy and the usual alternatives on the "
        "canonical workloads; print a Markdown summary.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, 3 repeats (~1 min)")
    size.add_argument(
        "--tiny", action="store_true", help="seconds-long smoke run; timings mean nothing"
    )
    parser.add_argument("--out", help="write the JSON results here")
    parser.add_argument("--plot", help="write a PNG bar chart of speed-ups here")
    parser.add_argument("--markdown", help="also write the Markdown summary here")
    parser.add_argument("--repeats", type=int, help="repeats per runner x workload")
    parser.add_argument("--workloads", help="comma list: " + ",".join(WORKLOAD_NAMES))
    parser.add_argument(
        "--runners", help="comma list (the serial loop always runs): " + ",".join(RUNNER_NAMES)
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="cap BLAS/OpenMP threads (default 1; 0 keeps the library defaults)",
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the ablation described by parsed arguments and return the JSON document."""
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    repeats = args.repeats if args.repeats is not None else REPEATS[mode]
    if repeats < 1:
        raise SystemExit(f"--repeats {repeats} is not accepted; expected an integer >= 1")
    names = _parse_list(args.workloads, WORKLOAD_NAMES, "workloads")
    workloads = [w for w in WORKLOADS if names is None or w.name in names]
    from ce_parallel.resources import cpu_budget

    workers = cpu_budget().count
    runner_names = _parse_list(args.runners, RUNNER_NAMES, "runners")
    runners = [
        r
        for r in build_runners(workers)
        if runner_names is None or r.name == "serial" or r.name in runner_names
    ]
    started = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    _progress(
        f"ce-parallel ablation: {mode} mode, {repeats} repeats, {len(workloads)} workloads, "
        f"{len(runners)} runners, {workers} workers"
    )
    with _blas_cap(args.blas_threads) as blas:
        cells, workload_facts = measure(
            workloads, runners, mode=mode, repeats=repeats, cold_workloads=COLD_WORKLOADS[mode]
        )
        machine = machine_facts(blas)
    machine["load_average_start"] = load_start
    results = analyse(cells)
    document = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["ce-parallel bench", *sys.argv[1:]]),
        "mode": mode,
        "repeats": repeats,
        "workers": workers,
        "baseline_chunks_per_worker": BASELINE_CHUNKS_PER_WORKER,
        "machine": machine,
        "runners": [r.name for r in runners],
        "baselines": [b for b in BASELINES if any(r.name == b for r in runners)],
        "workloads": workload_facts,
        "results": results,
    }
    document["targets"] = evaluate_targets(results)
    document["elapsed_s"] = round(time.perf_counter() - started, 2)
    return document


def main(argv: list[str] | None = None) -> int:
    """Run the ablation; write JSON/PNG/Markdown as asked; print the summary. Returns 0."""
    from ce_parallel.telemetry import json_safe

    args = build_parser().parse_args(argv)
    document = run(args)
    summary = markdown_summary(document)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(json_safe(document), handle, indent=2, sort_keys=False)
            handle.write("\n")
        _progress(f"wrote {args.out}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(summary)
        _progress(f"wrote {args.markdown}")
    if args.plot:
        try:
            plot_speedups(document, args.plot)
            _progress(f"wrote {args.plot}")
        except ImportError:
            _progress("matplotlib is not installed: no chart (pip install ce-parallel[bench])")
    _progress(f"done in {document['elapsed_s']:.1f} s")
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
