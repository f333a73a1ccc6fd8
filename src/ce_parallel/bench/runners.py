"""The runners of the ablation: ce-parallel's strategies, the facade, and the baselines a user
would pick instead (``joblib.Parallel``, ``concurrent.futures`` pools, loky's reusable executor).

A runner starts its pool before timing (one untimed warm-up map), runs a map, and stops it; a
cold runner times creation + first map + shutdown.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ce_parallel.registry import strategy_records

if TYPE_CHECKING:
    from ce_parallel.config import StrategyName


#: Chunks per worker that the concurrent.futures and loky baselines use: the "good chunk size"
#: of a careful user (n / 8 on 2 workers), which measured best for a reused process pool.
BASELINE_CHUNKS_PER_WORKER = 4
#: Idle-worker timeout of the loky baseline (joblib's value; loky's own default is 10 s).
LOKY_IDLE_TIMEOUT_S = 300
#: ce-parallel strategies measured as fixed choices: every registered one that does not choose
#: per map (``auto`` is measured on its own).
FIXED_STRATEGIES: tuple[str, ...] = tuple(
    name for name, record in strategy_records().items() if not record.chooses
)
#: Runners that stand for what a user would use instead of ce-parallel.
BASELINES: tuple[str, ...] = ("joblib.Parallel", "cf:threads", "cf:processes", "loky")


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


def serial_run(state: Any, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
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

    # fallback="raise": a strategy whose backend is missing (dask without its extra) must show
    # as unavailable, warm or cold, not be timed running the serial fallback under its own name
    return ParallelConfig(
        enabled=True,
        strategy=cast("StrategyName", strategy),
        full_matrix=True,
        telemetry=recorder,
        fallback="raise",
    )


def _ce_start(strategy: str, workers: int) -> Callable[[], _CeState]:
    """A warm executor of ``strategy``: its pool started and warmed with the workloads'
    imports. auto gets what a long-running service has: every pool it may choose up and warm
    (``start_pools``)."""

    def start() -> _CeState:
        from ce_parallel.executor import create_executor

        recorder = _ChoiceRecorder()
        executor = create_executor(_ce_config(strategy, recorder))
        try:
            starts = getattr(executor, "start_pools", None)  # auto's
            pools = list(starts().values()) if starts is not None else [executor]
            for pool in pools:
                pool.map(warm_imports, _warmup_items(workers))
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
        from ce_parallel._loky import loky_package_context

        # its own context: importing loky must not take the start method joblib.Parallel's
        # workers are started with (see ce_parallel._loky)
        context = loky_package_context()
        from loky import get_reusable_executor

        # loky's default idle timeout (10 s) lets workers exit between interleaved runs, which
        # would time a respawn instead of dispatch; joblib keeps them for 300 s, and so do we.
        return get_reusable_executor(
            max_workers=workers, timeout=LOKY_IDLE_TIMEOUT_S, context=context
        )

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
    runners = [Runner("serial", "serial", serial_run)]
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
