"""Measuring: runners interleaved across repeats, results checked against the serial loop."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .runners import Runner, serial_run
from .workloads import Case, Workload

if TYPE_CHECKING:
    pass


#: Relative and absolute tolerance when comparing float results with the serial loop's.
FLOAT_RTOL = 1e-7
FLOAT_ATOL = 1e-12


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
    #: Why the runner cannot run in this install (a missing package), when that is what failed.
    unavailable: str | None = None
    #: An adaptive runner's untimed first map of the workload (its pilot), in seconds.
    learning_s: float | None = None

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
        if self.learning_s is not None:
            out["learning_s"] = round(self.learning_s, 6)
        return out


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def missing_backend(exc: BaseException) -> str | None:
    """Why ``exc`` says a package is missing (its own message), or None for any other failure.

    A strategy whose backend is not installed raises its own error from the ``ImportError``
    (e.g. "strategy 'dask' needs the dask extra: pip install ..."); that message is the reason.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImportError):
            return str(current)
        cause = current.__cause__ or current.__context__
        if isinstance(cause, ImportError):
            return str(current)
        current = cause
    return None


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def blas_cap(threads: int) -> Iterator[dict[str, Any]]:
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


def _new_row(
    runners: Sequence[Runner], start_errors: dict[str, str], unavailable: dict[str, str]
) -> dict[str, Cell]:
    return {
        r.name: Cell(error=start_errors.get(r.name)) for r in runners if r.name not in unavailable
    }


def _warm_name(cold: str) -> str:
    return cold.removesuffix(":cold")


#: Runners that learn the work they are given (a pilot, remembered measurements).
LEARNING_KINDS = frozenset({"auto", "facade"})


def _repeat(
    name: str,
    label: str,
    runners: Sequence[Runner],
    cells: dict[str, dict[str, Cell]],
    states: dict[str, Any],
    case: Case,
    expected: list[Any],
    repeats: int,
) -> None:
    """Measure ``runners`` on one workload ``repeats`` times, interleaved.

    An adaptive runner (``auto``, the facades) first maps the workload once, untimed: it learns
    the function as it does once in a long-lived process, and the timed repeats measure the
    choices it then makes. That first map's time is kept (``learning_s``); the cold table
    times a first map from nothing.
    """
    row = cells[name]
    for runner in runners:
        cell = row.get(runner.name)
        if runner.kind not in LEARNING_KINDS or runner.cold or cell is None or cell.error:
            continue
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):  # a failure shows in the timed repeats
            runner.run(states.get(runner.name), case.fn, case.items)
        cell.learning_s = time.perf_counter() - t0
    for repeat in range(repeats):
        line = []
        for runner in _interleave(runners, repeat):
            cell = row.get(runner.name)
            if cell is None or cell.error is not None:
                continue
            line.append(_measure_once(runner, states.get(runner.name), case, expected, cell))
        progress(f"[{label}] {name} repeat {repeat + 1}/{repeats}: " + " ".join(line))


def measure(
    workloads: Sequence[Workload],
    runners: Sequence[Runner],
    *,
    mode: str,
    repeats: int,
    cold_workloads: tuple[str, ...] | None,
) -> tuple[dict[str, dict[str, Cell]], dict[str, dict[str, Any]], dict[str, str]]:
    """Run every runner on every workload ``repeats`` times, interleaved.

    Returns the cells (workload -> runner -> Cell), per-workload facts (size, skip reason), and
    the runners left out because a package they need is missing (runner -> why). A left-out
    runner has no cell; one whose ce-parallel strategy is unavailable is left out cold too.
    """
    cells: dict[str, dict[str, Cell]] = {}
    facts: dict[str, dict[str, Any]] = {}
    states: dict[str, Any] = {}
    start_errors: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    for runner in runners:
        if runner.cold:
            with contextlib.suppress(Exception):
                states[runner.name] = runner.start()
            continue
        t0 = time.perf_counter()
        try:
            states[runner.name] = runner.start()
            progress(f"  started {runner.name} ({time.perf_counter() - t0:.2f} s)")
        except Exception as exc:
            why = missing_backend(exc)
            if why is not None:
                unavailable[runner.name] = why
                progress(f"  {runner.name} left out: {why}")
            else:
                start_errors[runner.name] = _short_error(exc)
                progress(f"  {runner.name} failed to start: {start_errors[runner.name]}")
    for runner in runners:
        if runner.cold and _warm_name(runner.name) in unavailable:
            unavailable[runner.name] = unavailable[_warm_name(runner.name)]
    warm = [r for r in runners if not r.cold]
    cold = [r for r in runners if r.cold]
    cases: dict[str, tuple[Case, list[Any]]] = {}
    try:
        for index, workload in enumerate(workloads, 1):
            missing = workload.missing()
            if missing:
                reason = (
                    f"skipped: {', '.join(missing)} not installed (pip install ce-parallel[bench])"
                )
                facts[workload.name] = {"description": workload.description, "skipped": reason}
                progress(f"[{index}/{len(workloads)}] {workload.name}: {reason}")
                continue
            case = workload.case(mode)
            expected = serial_run(None, case.fn, case.items)  # reference, and warms imports
            cases[workload.name] = (case, expected)
            facts[workload.name] = {
                "description": workload.description,
                "size": case.size,
                "items": len(case.items),
            }
            cells[workload.name] = _new_row(warm, start_errors, unavailable)
            _repeat(
                workload.name,
                f"{index}/{len(workloads)}",
                warm,
                cells,
                states,
                case,
                expected,
                repeats,
            )
        # Cold starts come after every warm measurement: a cold runner's shutdown may end a pool
        # that warm runners share (joblib's process-wide loky executor), and the warm runners
        # would then be charged a restart.
        for name, (case, expected) in cases.items():
            if cold_workloads is not None and name not in cold_workloads:
                continue
            cells[name].update(_new_row(cold, start_errors, unavailable))
            _repeat(name, "cold", cold, cells, states, case, expected, repeats)
        # a runner that turned out to need a missing package when it ran is left out as well
        for row in cells.values():
            for runner_name, cell in list(row.items()):
                if cell.unavailable is not None:
                    unavailable.setdefault(runner_name, cell.unavailable)
        for row in cells.values():
            for runner_name in unavailable:
                row.pop(runner_name, None)
    finally:
        for runner in runners:
            if runner.name in states and not runner.cold:
                try:
                    runner.stop(states[runner.name])
                except Exception as exc:
                    progress(f"  stopping {runner.name} failed: {_short_error(exc)}")
    return cells, facts, unavailable


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
        cell.unavailable = missing_backend(exc)
        if cell.unavailable is not None:
            progress(f"  {runner.name} left out: {cell.unavailable}")
            return f"{runner.name}=unavailable"
        progress(f"  {runner.name} raised {cell.error}")
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
