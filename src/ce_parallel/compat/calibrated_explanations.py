"""calibrated-explanations on ce-parallel: its ``ParallelConfig`` and ``ParallelExecutor``.

Switching is one import line::

    # from calibrated_explanations.parallel import ParallelConfig, ParallelExecutor
    from ce_parallel.compat.calibrated_explanations import ParallelConfig, ParallelExecutor

    executor = ParallelExecutor(ParallelConfig(enabled=True, strategy="processes"))
    explainer = CalibratedExplainer(
        learner, x_cal, y_cal, perf_parallel=executor,
        factual_plugin="core.explanation.factual.instance_parallel",
        alternative_plugin="core.explanation.alternative.instance_parallel",
    )

The executor speaks the protocol calibrated-explanations 1.0.2 reads (``config``, ``map(fn,
items, *, workers, work_items, chunksize)``, ``metrics`` with a writable ``total_duration`` and
``snapshot()``, ``active_strategy_name``, ``__enter__``/``__exit__``, ``cancel()``, pickling
without the pool) and hands the work to a ce-parallel executor: pools that outlive one explain
call, ordered results, recorded fallback when a worker dies, telemetry. Where the two differ:

* ``__exit__`` without an error keeps the pool for the next explain call (calibrated-explanations
  enters and leaves the executor around every call); ``shutdown()`` releases it, and so does
  garbage collection or interpreter exit. ``__exit__`` after an error cancels and kills the pool.
* ``strategy="auto"`` is ce-parallel's measuring selector, not an error.
* An exception raised by the explained code propagates with its own type and is never re-run
  serially; only failures of the machinery fall back (``force_serial_on_failure`` still makes
  that fallback warn).
* ``from_env`` rejects unknown ``CE_PARALLEL`` tokens instead of warning.
* An unset ``instance_chunk_size`` means ``CE_INSTANCE_CHUNK_ROWS`` rows a task, not
  ``min_batch_size``. calibrated-explanations takes a few values of an explanation
  (``sampled_values`` and ``binned`` of its rules) from the chunk of rows it is explained in, so
  these follow the chunk size; set ``instance_chunk_size`` to keep them equal to another run's.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..checks import check_int, parse_switch, rejected
from ..config import ENV_MAIN
from ..config import ParallelConfig as CoreConfig
from ..errors import ConfigurationError
from ..executor import ParallelExecutor as CoreExecutor
from ..facade import ParallelFacade
from ..heuristics import CE_INSTANCE_CHUNK_ROWS, FACADE_MIN_INSTANCES
from ..metrics import ParallelMetrics
from ..registry import strategy_record
from ..resources import Resources

#: A registered strategy name; calibrated-explanations' are auto, threads, processes, joblib,
#: sequential (and ce-parallel adds dask and any registered one).
StrategyName = str


@dataclass
class ParallelConfig:
    """calibrated-explanations' executor settings, same names, order and defaults.

    The first fourteen fields are those of ``calibrated_explanations.parallel.ParallelConfig``
    (1.0.2), so positional and keyword construction both carry over; the last four are
    ce-parallel's (a per-map ``timeout``, ``fallback="serial"|"raise"``, a JSON-lines
    ``telemetry_path``, a ``dask_address``). Every value is validated on construction and a bad
    one raises ``ConfigurationError`` naming the field. ``feature_chunk_size`` is kept for
    compatibility: calibrated-explanations 1.0.2 does not read it either.
    """

    enabled: bool = False
    strategy: StrategyName = "auto"
    max_workers: int | None = None
    min_batch_size: int = 8
    min_instances_for_parallel: int | None = None
    tiny_workload_threshold: int | None = None
    instance_chunk_size: int | None = None
    feature_chunk_size: int | None = None
    granularity: Literal["instance"] = "instance"
    task_size_hint_bytes: int = 0
    force_serial_on_failure: bool = False
    telemetry: Callable[[str, dict[str, Any]], Any] | None = None
    worker_initializer: Callable[..., Any] | None = None
    worker_init_args: tuple[Any, ...] | None = None
    # ce-parallel's own settings
    timeout: float | None = None
    fallback: Literal["serial", "raise"] = "serial"
    telemetry_path: str | None = None
    dask_address: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> ParallelConfig:
        """Check every field (again); a bad value raises ``ConfigurationError`` naming it."""
        if self.granularity != "instance":
            raise rejected(
                "ParallelConfig.granularity",
                self.granularity,
                "'instance' (calibrated-explanations parallelises over instances only)",
            )
        check_int("ParallelConfig.feature_chunk_size", self.feature_chunk_size, 1)
        core = self.to_core()  # validates every shared field
        self.worker_init_args = core.worker_init_args
        self.telemetry_path = core.telemetry_path
        return self

    def to_core(self) -> CoreConfig:
        """The same settings as a ``ce_parallel.ParallelConfig`` (validated)."""
        return CoreConfig(**{name: getattr(self, name) for name in shared_fields()})

    @classmethod
    def from_core(cls, core: CoreConfig, **ce_only: Any) -> ParallelConfig:
        """Build from a ``ce_parallel.ParallelConfig``; ``ce_only`` sets the fields it lacks."""
        return cls(**{name: getattr(core, name) for name in shared_fields()}, **ce_only)

    def replace(self, **changes: Any) -> ParallelConfig:
        """Return a validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, base: ParallelConfig | None = None, environ: Mapping[str, str] | None = None
    ) -> ParallelConfig:
        """Return ``base`` (or the defaults) with the ``CE_PARALLEL*`` variables applied.

        The grammar is ce-parallel's (see ``ce_parallel.ParallelConfig.from_env``) plus the
        tokens only calibrated-explanations knows: ``feature_chunk=N``,
        ``force_serial=on|off`` and ``granularity=instance``. An unknown or malformed token
        raises ``ConfigurationError`` naming it.
        """
        env = dict(os.environ if environ is None else environ)
        start = base if base is not None else cls()
        ce_only, rest = _split_ce_tokens(env.get(ENV_MAIN, ""))
        env[ENV_MAIN] = ",".join(rest)
        core = CoreConfig.from_env(base=start.to_core(), environ=env)
        extras = {"feature_chunk_size": start.feature_chunk_size, "granularity": start.granularity}
        config = cls.from_core(core, **extras)
        return config.replace(**ce_only) if ce_only else config


#: calibrated-explanations' own fields, which ``ce_parallel.ParallelConfig`` does not have.
_CE_ONLY_FIELDS = frozenset({"feature_chunk_size", "granularity"})
#: ce-parallel's fields that calibrated-explanations' config does not carry: the facade's
#: full-matrix gate is the operator's (``CE_PARALLEL_FULL``), not the explainer's, and
#: ``max_workers`` is its worker count (``n_jobs`` is joblib's spelling of it).
_CORE_ONLY_FIELDS = frozenset({"full_matrix", "n_jobs"})


def shared_fields() -> tuple[str, ...]:
    """Fields of this config that are also ``ce_parallel.ParallelConfig``'s, in its order.

    Derived from the two dataclasses, so a new core field that this config also declares is
    passed through with no list to update; ``test_compat_config_declares_every_core_field``
    fails when a core field is neither declared here nor listed in ``_CORE_ONLY_FIELDS``.
    """
    own = {f.name for f in dataclasses.fields(ParallelConfig)} - _CE_ONLY_FIELDS
    return tuple(f.name for f in dataclasses.fields(CoreConfig) if f.name in own)


def _split_ce_tokens(raw: str) -> tuple[dict[str, Any], list[str]]:
    """Take calibrated-explanations' own ``CE_PARALLEL`` tokens out of ``raw``."""
    changes: dict[str, Any] = {}
    rest: list[str] = []
    for piece in raw.split(","):
        token = piece.strip()
        key, _, value = token.lower().replace(" ", "").partition("=")
        if key == "feature_chunk":
            if not value.isdigit() or int(value) < 1:
                raise _token_error(token, "feature_chunk needs a whole number >= 1")
            changes["feature_chunk_size"] = int(value)
        elif key == "force_serial":
            changes["force_serial_on_failure"] = parse_switch(f"{ENV_MAIN} token {key}", value)
        elif key == "granularity":
            if value != "instance":
                raise _token_error(token, "granularity accepts only instance")
            changes["granularity"] = "instance"
        elif token:
            rest.append(token)
    return changes, rest


def _token_error(token: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"{ENV_MAIN} token {token!r} is not accepted ({why})")


def _as_config(config: Any) -> ParallelConfig:
    if config is None:
        return ParallelConfig()
    if isinstance(config, ParallelConfig):
        return config
    if isinstance(config, CoreConfig):
        return ParallelConfig.from_core(config)
    if dataclasses.is_dataclass(config) and hasattr(config, "granularity"):
        # calibrated-explanations' own ParallelConfig: the same field names
        names = {f.name for f in dataclasses.fields(ParallelConfig)}
        return ParallelConfig(
            **{
                f.name: getattr(config, f.name)
                for f in dataclasses.fields(config)
                if f.name in names
            }
        )
    raise ConfigurationError(
        f"config={config!r} is not accepted; expected a ParallelConfig (this module's, "
        "ce_parallel's or calibrated-explanations') or None"
    )


class ParallelExecutor:
    """The executor calibrated-explanations' explainers accept, running on ce-parallel.

    ``config`` is the effective configuration: a copy of the one given, with
    ``instance_chunk_size`` set to ``CE_INSTANCE_CHUNK_ROWS`` when it was unset, because
    calibrated-explanations cuts the rows into tasks of that many before the executor sees them
    (its own fallback, ``min_batch_size`` rows, spends more time on per-chunk set-up than on
    explaining). Changes made to ``config`` afterwards apply from the next ``map``.

    Every ``map`` goes through a ``ce_parallel.ParallelFacade``: the same gate as any other
    caller (the operator's ``CE_PARALLEL=off`` and ``CE_PARALLEL_FULL``, CI, the CPU budget,
    measured costs), the same decision and run records. Its pools are created on the first
    parallel ``map`` and reused by every later one, across explain calls, until ``shutdown()``
    or ``cancel()``. ``cache`` (calibrated-explanations' calibrator cache) is reset before a
    pool whose strategy pickles work starts, as its own executor does.
    """

    def __init__(
        self,
        config: ParallelConfig | CoreConfig | None = None,
        *,
        cache: Any = None,
        resources: Resources | None = None,
    ) -> None:
        given = _as_config(config)
        chunk = given.instance_chunk_size or CE_INSTANCE_CHUNK_ROWS
        self.config: ParallelConfig = given.replace(instance_chunk_size=chunk)
        self.cache = cache
        self.resources = resources
        self.metrics = ParallelMetrics()
        #: The strategy serving this executor while it is entered; ``"sequential"`` after a map
        #: whose workers failed and whose work was re-run serially; None when disabled.
        self.active_strategy_name: str | None = None
        self._facade: ParallelFacade | None = None
        self._facade_key: tuple[CoreConfig, int | None] | None = None
        self._reset_for: set[str] = set()
        self._lock = threading.Lock()

    # -- the protocol calibrated-explanations reads -------------------------------------------

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        workers: int | None = None,
        work_items: int | None = None,
        chunksize: int | None = None,
    ) -> list[Any]:
        """Return ``[fn(x) for x in items]``, in parallel where the facade's gate says so.

        ``work_items`` is the caller's measure of the work (instances, or instances x
        features): the count rules weigh it while nothing is known of the cost (after a first
        run the facade decides from what it measured). ``workers`` caps the pool size (a
        different value replaces the pool). ``chunksize`` is how many items travel to a worker
        together; by default the engine plans it (``PooledExecutor.plan_chunks``: chunks of
        equal size, a multiple of the workers).
        """
        check_int("workers", workers, 1)
        self.config.validate()
        work = list(items)
        facade = self._facade_for(workers)
        # the calibrator cache is reset before a pool that pickles work first starts
        self._reset_cache_for(facade.target_strategy())
        fallbacks_before = self.metrics.fallbacks
        try:
            return facade.map(
                fn,
                work,
                n_instances=work_items if work_items is not None else len(work),
                chunksize=chunksize,
            )
        finally:
            if self.metrics.fallbacks > fallbacks_before:
                # calibrated-explanations warns after the call when it sees "sequential" here
                self.active_strategy_name = "sequential"

    def __enter__(self) -> ParallelExecutor:
        """Mark the executor active; entering again (nested) changes nothing else."""
        if self.config.enabled:
            self.active_strategy_name = self.config.strategy
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """After an error cancel and kill the pool; otherwise keep it for the next call."""
        if exc_type is not None:
            self.cancel()

    def cancel(self) -> None:
        """Stop a running ``map`` and kill the pool; the next ``map`` starts a fresh one."""
        self._release(cancel=True)
        self.active_strategy_name = None

    def shutdown(self, cancel: bool = False) -> None:
        """Release the pool and every worker it started; waits for them unless ``cancel``.

        The executor stays usable: a later ``map`` starts a new pool.
        """
        self._release(cancel=cancel)
        self.active_strategy_name = None

    @property
    def executor(self) -> CoreExecutor | None:
        """The ce-parallel executor that ran the last parallel map (None before one)."""
        facade = self._facade
        decision = None if facade is None else facade.last_decision
        if facade is None or decision is None or not decision.use_parallel:
            return None
        found: CoreExecutor | None = facade.executors.get(decision.strategy)
        return found

    @property
    def last_decision(self) -> Any:
        """The facade's decision for the last ``map`` (a ``ce_parallel.ParallelDecision``)."""
        return None if self._facade is None else self._facade.last_decision

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_facade=None, _facade_key=None, _reset_for=set())
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(enabled={self.config.enabled}, "
            f"strategy={self.config.strategy!r}, executor={self.executor!r})"
        )

    # -- helpers ------------------------------------------------------------------------------

    def _facade_for(self, workers: int | None) -> ParallelFacade:
        """The facade for the current settings (and ``workers`` cap), created on first use."""
        core = self.config.to_core()
        cap = (
            workers
            if core.max_workers is None
            else min(workers or core.max_workers, core.max_workers)
        )
        key = (core, cap)
        with self._lock:
            if self._facade is not None and self._facade_key == key:
                return self._facade
            stale = self._facade
            # creating a facade starts no pool (that happens on its first parallel map): cheap
            # enough to hold the lock, so two threads never build two
            # calibrated-explanations' instance floor: a task of rows is the unit of work, so
            # fewer instances than one row chunk stay serial while nothing is known of the cost
            floor = core.min_instances_for_parallel or max(
                FACADE_MIN_INSTANCES, core.instance_chunk_size or core.min_batch_size
            )
            # instance_chunk_size is rows per task, which calibrated-explanations reads to cut
            # the rows before the map; the items the facade gets are those tasks, and their
            # chunks are the engine's to plan. Passed on, it bundled up to 100 tasks into one
            # chunk: 200 or 1,000 rows (2 or 10 tasks) ran on one worker.
            facade = ParallelFacade(
                core.replace(
                    max_workers=cap, min_instances_for_parallel=floor, instance_chunk_size=None
                ),
                resources=self.resources,
                metrics=self.metrics,
            )
            self._facade, self._facade_key = facade, key
            self._reset_for = set()
        if stale is not None:
            stale.close()
        return facade

    def _reset_cache_for(self, strategy: str) -> None:
        if self.cache is None or strategy in self._reset_for:
            return
        self._reset_for.add(strategy)
        if strategy_record(strategy).pickles_work:
            self.cache.forksafe_reset()

    def _release(self, cancel: bool) -> None:
        with self._lock:
            facade, self._facade, self._facade_key = self._facade, None, None
        if facade is not None:
            facade.close(cancel=cancel)


__all__ = ["ParallelConfig", "ParallelExecutor"]
