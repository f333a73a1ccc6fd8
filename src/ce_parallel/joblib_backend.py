"""A joblib parallel backend, ``"ce-parallel"``: joblib and scikit-learn code on ce-parallel.

::

    import ce_parallel.joblib_backend  # registers the backend (or call register())
    with joblib.parallel_config(backend="ce-parallel"):
        cross_val_score(model, X, y, n_jobs=-1)
        RandomForestClassifier(n_jobs=2).fit(X, y)

Every ``joblib.Parallel`` call under the backend then keeps ce-parallel's rules:

* **CPU budget**: ``n_jobs`` (``-1`` all of the budget, ``-2`` all but one, ``None``: 1, as
  in joblib) is capped at ``ce_parallel.cpu_budget()`` (scheduler allocation, cgroup quota,
  affinity, ``LOKY_MAX_CPU_COUNT``), and the decision says so when it capped;
* **kill switch**: ``CE_PARALLEL=off`` runs everything serially in the caller's thread;
* **nested guard**: inside one of our workers, or another library's (``nesting.foreign_worker``),
  the call runs serially, and a ``Parallel`` inside a task of this backend runs serially too;
* **fallback**: a task the machinery lost is re-run serially and recorded (``futures``);
* **telemetry**: one ``decision`` record per ``Parallel`` call, whatever it decided (the
  ``ParallelDecision`` fields, plus ``source="joblib_backend"``, ``n_jobs``, ``prefer``,
  ``require`` and ``nested_in``), and one ``run`` record per parallel call.

Work goes to a ce-parallel executor: ``threads`` when joblib requires shared memory or prefers
threads (scikit-learn's forests do), else the strategy the backend was given
(``parallel_config(backend="ce-parallel", strategy="joblib")``) or that ``CE_PARALLEL`` names,
else ``processes``. Executors are kept per strategy and worker count, reused by later calls, and
released by ``shutdown_pools()`` (also at interpreter exit). Unlike the facade, the backend does
not go serial in CI: the code asked for ``n_jobs`` itself, and ``CE_PARALLEL=off`` still wins.

``joblib_settings()`` reads an active ``joblib.parallel_config`` (``n_jobs=1`` means serial,
``backend="threading"`` means threads) for the joblib strategy to honour.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from joblib import register_parallel_backend
from joblib._parallel_backends import (
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from . import telemetry
from .config import ParallelConfig, operator_switch
from .decision import ParallelDecision
from .executor import ParallelExecutor, create_executor
from .futures import CeFuturesExecutor
from .joblib_config import JoblibSettings, joblib_settings
from .nesting import foreign_worker
from .njobs import resolve_n_jobs
from .resources import cpu_budget, default_start_method, detect_ci
from .worker import in_worker

#: The name under which the backend is registered with joblib.
BACKEND_NAME = "ce-parallel"
#: The strategy that runs process work when neither the backend nor ``CE_PARALLEL`` names one:
#: a private loky pool, which leaves joblib's own process-wide executor alone.
DEFAULT_PROCESS_STRATEGY = "processes"
#: The strategy that runs work needing shared memory or preferring threads.
THREAD_STRATEGY = "threads"

_pools_lock = threading.Lock()
_pools: dict[tuple[str, int, str], ParallelExecutor] = {}


def _pool(config: ParallelConfig, workers: int) -> ParallelExecutor:
    """The kept executor for ``config.strategy`` on ``workers`` workers (created once)."""
    key = (config.strategy, workers, repr(config))
    with _pools_lock:
        executor = _pools.get(key)
        if executor is None or executor.closed:
            executor = create_executor(config, max_workers=workers)
            _pools[key] = executor
        return executor


def shutdown_pools() -> None:
    """Release every executor the backend keeps (a later ``Parallel`` call starts new ones)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for executor in pools:
        executor.shutdown()


atexit.register(shutdown_pools)


def _run_batch(batch: Callable[[], Any]) -> Any:
    """Run one joblib batch of calls (a ``BatchedCalls``) in a worker."""
    return batch()


class CeParallelBackend(ParallelBackendBase):
    """joblib's tasks on a ce-parallel executor (see the module)."""

    default_n_jobs = 1
    supports_retrieve_callback = True
    # a task that needs shared memory runs on the threads strategy
    supports_sharedmem = True
    uses_threads = False

    def __init__(
        self,
        config: ParallelConfig | None = None,
        *,
        strategy: str | None = None,
        telemetry: telemetry.TelemetryCallback | None = None,
        environ: Mapping[str, str] | None = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **backend_kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **backend_kwargs,
        )
        base = config if config is not None else ParallelConfig(enabled=True)
        if telemetry is not None:
            base = base.replace(telemetry=telemetry)
        self._base = base.validate()
        self._strategy = strategy
        self._environ = environ
        self._view: CeFuturesExecutor | None = None
        self._executor: ParallelExecutor | None = None
        self._config = self._base
        self._workers = 1
        self._tasks = 0
        self._batches = 0
        self._started = 0.0
        self._fallbacks_before = 0

    # -- deciding -----------------------------------------------------------------------------

    def _env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def _nested_in(self) -> str | None:
        if in_worker():
            return "ce-parallel"
        return foreign_worker()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The workers a call of ``n_jobs`` gets: 1 when off or nested, else capped at the
        budget."""
        if operator_switch(self._env()) is False or self._nested_in() is not None:
            resolve_n_jobs(n_jobs, 1)  # 0 is still an error
            return 1
        budget = cpu_budget(self._env(), max_workers=self._base.max_workers)
        asked = resolve_n_jobs(n_jobs, budget.count)
        return max(1, min(asked or self.default_n_jobs, budget.count))

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Decide, record the decision, and ready an executor; serial calls fall back to
        joblib's ``SequentialBackend`` (in the caller's thread)."""
        self.parallel = parallel
        env = self._env()
        config = ParallelConfig.from_env(self._base, env)
        budget = cpu_budget(env, max_workers=config.max_workers)
        asked = resolve_n_jobs(n_jobs, budget.count)
        requested = asked or self.default_n_jobs
        workers = max(1, min(requested, budget.count))
        strategy = self._choose_strategy(config, prefer, require)
        nested = self._nested_in()
        reason, detail = "enabled", f"{strategy} on {workers} workers"
        if operator_switch(env) is False:
            reason, detail = "operator_off", "CE_PARALLEL=off: the operator switched parallel off"
        elif nested is not None:
            reason = "nested_worker"
            detail = f"called inside a {nested} worker: no pool in a pool"
        elif requested < 2:
            reason, detail = "disabled", f"n_jobs={n_jobs!r} asks for serial work"
        elif workers < 2:
            reason = "no_cpu_budget"
            detail = f"CPU budget {budget.count} (limited by {budget.limited_by})"
        elif requested > workers:
            detail += (
                f"; n_jobs={n_jobs!r} asked for {requested}, capped at the CPU budget "
                f"{budget.count} (limited by {budget.limited_by})"
            )
        parallel_ok = reason == "enabled"
        self._record_decision(
            config,
            parallel_ok,
            strategy if parallel_ok else "sequential",
            workers if parallel_ok else 1,
            reason,
            detail,
            budget,
            {"n_jobs": n_jobs, "prefer": prefer, "require": require, "nested_in": nested},
        )
        if not parallel_ok:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        run_config = config.replace(strategy=strategy, enabled=True, full_matrix=True)
        self._config = run_config
        self._executor = _pool(run_config, workers)
        self._view = self._executor.as_executor()
        self._workers = workers
        return workers

    def _choose_strategy(
        self, config: ParallelConfig, prefer: str | None, require: str | None
    ) -> str:
        if require == "sharedmem":
            return THREAD_STRATEGY
        if self._strategy is not None:
            return self._strategy
        if config.strategy not in ("sequential", "auto", self._base.strategy):
            return config.strategy  # CE_PARALLEL named one
        if self._base.strategy not in ("sequential", "auto"):
            return self._base.strategy
        if prefer == "threads":
            return THREAD_STRATEGY
        return DEFAULT_PROCESS_STRATEGY

    def _record_decision(
        self,
        config: ParallelConfig,
        use_parallel: bool,
        strategy: str,
        workers: int,
        reason: str,
        detail: str,
        budget: Any,
        extra: dict[str, Any],
    ) -> None:
        if not telemetry.wanted(config.telemetry, config.telemetry_path):
            return
        decision = ParallelDecision(
            use_parallel=use_parallel,
            decision="parallel" if use_parallel else "serial",
            strategy=strategy,
            workers=workers,
            reason=reason,
            detail=detail,
            n_instances=0,
            n_features=0,
            bytes_hint=None,
            seconds_per_item=None,
            estimated_work_s=0.0,
            requested_strategy=self._strategy or config.strategy,
            full_matrix=config.full_matrix,
            executor_type=type(self).__name__,
            platform=f"{sys.platform}/{default_start_method()}",
            ci=detect_ci(self._env()) is not None,
            cpu_budget=budget.count,
            cpu_limited_by=budget.limited_by,
        )
        payload = {**decision.as_dict(), "source": "joblib_backend", **extra}
        telemetry.emit("decision", payload, callback=config.telemetry, path=config.telemetry_path)

    # -- running --------------------------------------------------------------------------------

    def start_call(self) -> None:
        self._tasks = 0
        self._batches = 0
        self._started = time.perf_counter()
        executor = self._executor
        self._fallbacks_before = 0 if executor is None else executor.metrics.fallbacks

    def stop_call(self) -> None:
        executor = self._executor
        if executor is None:
            return
        wall = time.perf_counter() - self._started
        record = telemetry.run_record(
            strategy=executor.name,
            items=self._tasks,
            chunks=self._batches,
            workers=self._workers,
            wall_time_s=wall,
            busy_time_s=None,
            fallbacks=executor.metrics.fallbacks - self._fallbacks_before,
        )
        config = self._config
        telemetry.emit(
            "run",
            {**record, "source": "joblib_backend"},
            callback=config.telemetry,
            path=config.telemetry_path,
        )

    def submit(self, func: Callable[[], Any], callback: Any = None) -> Future[Any]:
        """Run one joblib batch on the executor; ``callback`` runs when it is done."""
        view = self._view
        assert view is not None, "configure() was not called"
        self._batches += 1
        try:
            self._tasks += len(func)  # type: ignore[arg-type]
        except TypeError:
            self._tasks += 1
        future = view.submit(_run_batch, func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the tasks not yet started (running ones finish; their results are dropped)."""
        view = self._view
        if view is not None:
            view.shutdown(wait=False, cancel_futures=True)
        self._view = (
            self._executor.as_executor() if ensure_ready and self._executor is not None else None
        )

    def terminate(self) -> None:
        """End of a ``Parallel`` call: the executor is kept for the next one."""
        view, self._view = self._view, None
        if view is not None:
            view.shutdown(wait=False)

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """A ``Parallel`` inside one of this backend's tasks runs serially."""
        level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=level), None


def register() -> None:
    """Register the backend with joblib as ``"ce-parallel"`` (done on import; idempotent)."""
    register_parallel_backend(BACKEND_NAME, CeParallelBackend)


register()


__all__ = [
    "BACKEND_NAME",
    "CeParallelBackend",
    "JoblibSettings",
    "joblib_settings",
    "register",
    "shutdown_pools",
]
