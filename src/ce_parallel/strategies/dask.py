"""``DaskExecutor``: chunks run as tasks on a Dask distributed cluster.

The executor runs on an existing scheduler (``ParallelConfig.dask_address``, which
``CE_PARALLEL_DASK_ADDRESS`` sets), on an existing ``distributed.Client`` passed as ``client=``,
or on a ``LocalCluster`` of its own sized from the CPU budget (worker processes, one thread each,
no dashboard). Only what it started is closed on ``shutdown()``: its own cluster and client, or
the client it opened to a given address; a client passed in stays open.

The workers are not the caller's children: they belong to a nanny, a batch job, or live inside
the caller's own process (``LocalCluster(processes=False)``). So they never get the parent
watchdog, and the once-per-worker set-up (the ``worker_initializer``, fork-safety hooks, and the
numeric-thread caps of a cluster we sized) travels as a Dask worker plugin, registered when the
executor connects: every worker runs it once, before its first task, and a worker that restarts
gets it again from the scheduler. A worker inside the caller's process runs only the initializer,
once per worker thread; nothing else touches the caller's process.

Each chunk is one task submitted with ``pure=False``, so identical chunks are separate tasks that
each run once. A bridge thread waits on ``distributed.as_completed`` (woken by each finished
task, never polling on a timer) and completes one ``concurrent.futures.Future`` per chunk, so
waiting, deadlines and cancellation work exactly as for the other strategies. The objects the
chunks share (a model bound into ``fn``, an explainer in every item) and a function whose pickle
is large are scattered to every worker once per content and kept across maps
(``dask_objects``); the tasks carry references, and a worker unpickles each object once.
Lost workers (``KilledWorker``), closed connections, work that cannot be serialized and
unreachable schedulers are failures of the machinery, told apart by exception type and the
stage they happened in: they reach the engine as ``WorkerCrashedError``, ``SerializationError``
or ``BackendUnavailableError`` and fall back. dask is imported only when
a pool starts, so ``import ce_parallel`` never loads it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from ..config import ParallelConfig
from ..engine import PooledExecutor
from ..errors import (
    BackendUnavailableError,
    SerializationError,
)
from ..resources import Resources, numeric_thread_env, threads_per_worker
from ..shared_objects import (
    dumps_referencing,
    find_shared,
    first_items,
    forget_objects,
    loads_with,
)
from ..worker import IN_WORKER_ENV, ChunkJob, ChunkOutcome, WorkerSetup, gc_paused, run_chunk
from .dask_bridge import Bridge, machinery_error, settle
from .dask_objects import ScatteredObjects, digest_of

#: A function whose cloudpickle is at least this many bytes is scattered to every worker once
#: per map instead of being pickled into every chunk task. Below it, the copy per task costs
#: less than the scatter round trip (a broadcast to all workers plus one scheduler message); at
#: 1 MiB and 16 chunks per map the per-task copies already move 16 MiB through the scheduler,
#: and distributed itself warns about task graphs of a few MiB.
SCATTER_MIN_BYTES = 1024 * 1024
#: Seconds allowed for connecting to a given scheduler before the strategy falls back.
CONNECT_TIMEOUT_S = 10.0
#: Name under which an executor's set-up plugin is registered (the executor's token follows).
PLUGIN_PREFIX = "ce-parallel-setup-"
#: Set-up outcomes a worker's plugin produced (an initializer error, fork-hook counts), by
#: executor token: the first chunk of that executor in this process reports them.
_prepared: dict[str, ChunkOutcome] = {}
_prepared_lock = threading.Lock()


def _missing_fn(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("this chunk's function travels separately (as bytes) and was not given")


#: Functions a worker loaded, by executor and content (the last few only).
_loaded_fns: collections.OrderedDict[str, Callable[..., Any]] = collections.OrderedDict()
_loaded_lock = threading.Lock()
_LOADED_KEEP = 4


def _load_fn(key: str, payload: bytes, objects: dict[str, bytes]) -> Callable[..., Any]:
    """The map's function, unpickled once per worker process and content."""
    with _loaded_lock:
        fn = _loaded_fns.get(key)
    if fn is None:
        fn = loads_with(payload, objects)
        with _loaded_lock:
            _loaded_fns[key] = fn
            while len(_loaded_fns) > _LOADED_KEEP:
                _loaded_fns.popitem(last=False)
    return fn


def run_pickled_chunk(
    payload: bytes, key: str, packed_job: bytes, objects: dict[str, bytes] | None = None
) -> ChunkOutcome:
    """A chunk task whose job and function travel as cloudpickle bytes.

    Dask pickles a task's arguments with the standard pickler first, which sends functions and
    classes by reference and ignores ``cloudpickle.register_pickle_by_value``: an item or a
    function from a module that the scheduler (which loads every task) or a worker on another
    node cannot import would fail there. Pickled with cloudpickle in the caller, the work
    travels exactly as the process strategy sends it. ``payload`` (the function, given or
    scattered) is loaded once per worker and content (``key``); the objects the chunks share
    travel as references to the pickles in ``objects`` (scattered, by digest), each unpickled
    once per worker. A loading failure raises: the task fails outside the user's code, a
    failure of the machinery.
    """
    shared = objects or {}
    with gc_paused():
        job: ChunkJob = loads_with(packed_job, shared)
    return run_dask_chunk(dataclasses.replace(job, fn=_load_fn(key, payload, shared)))


async def _forget_on_worker(digests: list[str]) -> None:
    """Drop an executor's shared objects from a worker (run on its event loop: dask sends a
    call it does not wait for only as a coroutine; dropping cache entries is instant)."""
    forget_objects(digests)


def _prepare_worker(setup: WorkerSetup) -> None:
    """Run the executor's set-up in this worker thread now; keep what the first chunk reports."""
    outcome = run_chunk(ChunkJob(fn=_missing_fn, start=0, items=(), setup=setup))
    if outcome.error is not None or outcome.fork_hooks is not None:
        with _prepared_lock:
            _prepared[setup.token] = outcome


def run_dask_chunk(job: ChunkJob) -> ChunkOutcome:
    """A chunk task: ``run_chunk``, first reporting what this worker's set-up plugin produced.

    An initializer that failed in the plugin fails the first chunk of this worker with its own
    error, as it would have when run with that chunk; fork-hook counts ride on the first chunk.
    """
    prepared = None
    if job.setup is not None and _prepared:
        with _prepared_lock:
            prepared = _prepared.pop(job.setup.token, None)
    if prepared is not None and prepared.error is not None:
        return dataclasses.replace(prepared, start=job.start)
    outcome = run_chunk(job)
    if prepared is not None and outcome.fork_hooks is None:
        outcome.fork_hooks = prepared.fork_hooks
    return outcome


def _plugin_class() -> type:
    """``WorkerSetupPlugin``, built on first use so that dask is imported only when needed."""
    global _plugin_type
    if _plugin_type is not None:
        return _plugin_type
    from distributed import WorkerPlugin

    class WorkerSetupPlugin(WorkerPlugin):
        """Runs an executor's ``WorkerSetup`` once on every worker, and again after a restart.

        The set-up is queued on the worker's task thread pool (with one thread per worker, the
        very thread that runs its chunks, so an initializer's thread-local state is seen by
        them), ahead of any chunk of the executor: the pool runs in order. It is not awaited,
        so registering never waits for tasks that other clients keep running on a shared
        cluster. Registered idempotently under one name per executor; never raises into Dask:
        an initializer error is kept and reported by that worker's first chunk (a chunk that
        comes first runs the same set-up itself, once).
        """

        idempotent = True

        def __init__(self, packed_setup: bytes) -> None:
            # cloudpickle bytes, as the chunks travel: loaded in the worker, never by the
            # scheduler, and an initializer from a module sent by value arrives too
            self.packed_setup = packed_setup

        def setup(self, worker: Any) -> None:
            import cloudpickle

            try:
                setup = cloudpickle.loads(self.packed_setup)
            except Exception:
                # the chunks carry the same set-up and fail to load as a failure of the
                # machinery, which the caller hears about; a worker plugin must not raise
                return
            worker.executors["default"].submit(_prepare_worker, setup)

    WorkerSetupPlugin.__module__ = __name__
    WorkerSetupPlugin.__qualname__ = "WorkerSetupPlugin"
    _plugin_type = WorkerSetupPlugin
    return WorkerSetupPlugin


_plugin_type: type | None = None


def __getattr__(name: str) -> Any:
    # a worker unpickles the plugin by reference: ``ce_parallel.strategies.dask.WorkerSetupPlugin``
    if name == "WorkerSetupPlugin":
        return _plugin_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class DaskExecutor(PooledExecutor):
    """Runs chunks as tasks on a Dask distributed cluster (given, or a local one of its own)."""

    name = "dask"

    def __init__(
        self,
        config: ParallelConfig | None = None,
        *,
        max_workers: int | None = None,
        resources: Resources | None = None,
        client: Any = None,
    ) -> None:
        """``client``: a ``distributed.Client`` to run on; it is used, never closed."""
        super().__init__(config, max_workers=max_workers, resources=resources)
        self._given_client = client
        self._client: Any = None
        self._cluster: Any = None
        self._owns_client = False
        # one bridge per map in flight: maps from several threads run side by side
        self._bridges: set[Bridge] = set()
        self._bridges_lock = threading.Lock()
        self._plugin: str | None = None  # name of the set-up plugin registered on the cluster
        self._scattered = ScatteredObjects()  # pickles kept on every worker, by content

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` in use, or None before the first map / after shutdown."""
        return self._client

    def start_pool(self) -> None:
        """Connect to the given client or address, or start a ``LocalCluster`` of our own.

        A cluster we did not size sets ``workers`` to its real number of threads, so the map's
        chunks are planned for it.
        """
        with self._pool_lock:
            if self._client is not None:
                return
            try:
                from distributed import Client, LocalCluster
            except ImportError as exc:
                raise BackendUnavailableError(
                    "strategy 'dask' needs the dask extra: pip install 'ce-parallel[dask]'"
                ) from exc
            if self._given_client is not None:
                self._client = self._given_client
            elif self.config.dask_address:
                try:
                    self._client = Client(
                        self.config.dask_address, timeout=CONNECT_TIMEOUT_S, set_as_default=False
                    )
                except Exception as exc:
                    raise BackendUnavailableError(
                        f"cannot reach the dask scheduler at ParallelConfig.dask_address="
                        f"{self.config.dask_address!r} ({type(exc).__name__}: {exc})"
                    ) from exc
                self._owns_client = True
            else:
                env = numeric_thread_env(threads_per_worker(self.budget.count, self.workers))
                env[IN_WORKER_ENV] = "1"
                cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    # The scheduler serves its health routes even without a dashboard, on port
                    # 8787 unless told otherwise; any free port avoids clashing with (and warning
                    # about) another cluster on a shared node.
                    scheduler_kwargs={"dashboard_address": ":0"},
                    env=env,
                )
                try:
                    self._client = Client(cluster, set_as_default=False)
                except BaseException:
                    cluster.close()
                    raise
                self._cluster = cluster
                self._owns_client = True
            try:
                if self._cluster is None:
                    # A cluster we did not size: plan chunks for the threads it actually has.
                    threads = sum(self._client.nthreads().values())
                    if threads > 0:
                        self.workers = threads
                        self.metrics.max_workers = threads
                self._register_plugin()
            except BaseException:
                self._close(self._client, self._cluster, self._owns_client)
                self._client = self._cluster = None
                self._owns_client = False
                raise

    def _register_plugin(self) -> None:
        """Register this executor's once-per-worker set-up with the cluster (idempotent).

        The scheduler keeps the plugin and gives it to every worker that joins or restarts
        while this executor is connected; ``release_pool`` unregisters it.
        """
        import cloudpickle

        name = PLUGIN_PREFIX + self._token
        try:
            packed = cloudpickle.dumps(self.worker_setup())
        except Exception as exc:
            raise SerializationError(
                "ParallelConfig.worker_initializer or its arguments cannot be pickled for the "
                f"dask workers: {type(exc).__name__}: {exc}"
            ) from exc
        plugin = _plugin_class()(packed)
        try:
            self._client.register_plugin(plugin, name=name)
        except Exception as exc:
            raise BackendUnavailableError(
                f"the dask cluster did not take the worker set-up: {type(exc).__name__}: {exc}"
            ) from exc
        self._plugin = name

    def worker_setup(self) -> WorkerSetup:
        """As for every strategy; numeric caps only on a cluster this executor sized.

        Never the parent watchdog: a Dask worker's parent is its nanny (or the worker lives
        in the caller's process). Workers of a cluster we did not start size their numeric
        libraries from their own node (dask's nanny already limits them); our local budget
        says nothing about that machine.
        """
        setup = dataclasses.replace(super().worker_setup(), watch_parent=False)
        if self._cluster is not None:
            threads = threads_per_worker(self.budget.count, self.workers)
            setup = dataclasses.replace(setup, blas_threads=threads)
        return setup

    def submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        client = self._client
        scattered = self._scattered
        assert client is not None
        fn = jobs[0].fn
        submitted: list[Any] = []
        try:
            # (every chunk of a map is submitted in one call)
            refs, objects = scattered.share(client, find_shared(fn, first_items(jobs)))
            try:
                payload, _ = dumps_referencing(fn, refs, out_of_band=False)
            except Exception as exc:
                # every task would carry it: nothing can be submitted
                raise SerializationError(
                    "the function cannot be pickled for the dask workers: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            key = f"{self._token}-{digest_of(payload)}"
            fn_arg: Any = payload
            if len(jobs) > 1 and len(payload) >= SCATTER_MIN_BYTES:
                fn_arg = scattered.scatter(client, payload)[1]
            for job in jobs:
                try:
                    with gc_paused():
                        packed, _ = dumps_referencing(
                            dataclasses.replace(job, fn=_missing_fn), refs, out_of_band=False
                        )
                except Exception as exc:
                    raise SerializationError(
                        f"items {job.start}..{job.start + len(job.items) - 1} cannot be pickled "
                        f"for the dask workers: {type(exc).__name__}: {exc}"
                    ) from exc
                submitted.append(
                    client.submit(run_pickled_chunk, fn_arg, key, packed, objects, pure=False)
                )
        except BaseException as exc:
            # what was already submitted must not keep running while everything falls back
            client.cancel(submitted)
            if isinstance(exc, Exception):
                raise machinery_error(exc, "submit") from exc
            raise
        futures: list[Future[ChunkOutcome]] = [Future() for _ in jobs]
        for fut in futures:
            # A dask task cannot report when it starts; treating every chunk as running means
            # that on a user error the earlier chunks are awaited and only later ones cancelled.
            fut.set_running_or_notify_cancel()
        bridge = Bridge(
            client.loop,
            list(zip(submitted, futures, strict=True)),
            (fn_arg, objects),
            self._forget_bridge,
        )
        with self._bridges_lock:
            self._bridges.add(bridge)
        return futures

    def _forget_bridge(self, bridge: Bridge) -> None:
        with self._bridges_lock:
            self._bridges.discard(bridge)

    def _finish_bridges(self) -> None:
        """Stop every map's bridge (the pool is being released)."""
        with self._bridges_lock:
            bridges, self._bridges = list(self._bridges), set()
        for bridge in bridges:
            self._cancel(bridge.stop())

    def _cancel(self, dask_futures: list[Any]) -> None:
        client = self._client
        if client is not None and dask_futures:
            with contextlib.suppress(Exception):
                client.cancel(dask_futures)

    def abort(self, pending: Iterable[Future[ChunkOutcome]], kill: bool) -> None:
        pending = list(pending)
        with self._bridges_lock:
            bridges = list(self._bridges)
        for bridge in bridges:
            self._cancel(bridge.drop(pending))
        for fut in pending:
            settle(fut, fut.set_exception, BackendUnavailableError("the chunk was cancelled"))
        if kill and self._cluster is not None:
            # A running task cannot be interrupted; our own workers are stopped with the
            # cluster and the next map starts a fresh one. A cluster we were given keeps
            # running the few tasks already started: they are cancelled, their results dropped.
            self.release_pool(kill=True)

    def release_pool(self, kill: bool) -> None:
        """Close what this executor started: its cluster and client, or its client only."""
        with self._pool_lock:
            self._finish_bridges()
            client, self._client = self._client, None
            cluster, self._cluster = self._cluster, None
            owns, self._owns_client = self._owns_client, False
            plugin, self._plugin = self._plugin, None
            digests = self._scattered.clear()
        if plugin is not None and client is not None and cluster is None:
            # a cluster that outlives us must not give our set-up to the workers it starts
            with contextlib.suppress(Exception):
                client.unregister_worker_plugin(plugin)
        if digests and client is not None and cluster is None:
            # nor keep the objects we sent unpickled (sent, not awaited: a shutdown never
            # waits on a cluster that may be gone)
            with contextlib.suppress(Exception):
                client.run(_forget_on_worker, digests, wait=False)
        forget_objects(digests)  # workers inside this process
        self._close(client, cluster, owns)
        # what workers inside this process (an in-process cluster) kept for this executor
        with _prepared_lock:
            _prepared.pop(self._token, None)
        with _loaded_lock:
            for key in [k for k in _loaded_fns if k.startswith(f"{self._token}-")]:
                del _loaded_fns[key]

    @staticmethod
    def _close(client: Any, cluster: Any, owns: bool) -> None:
        if owns and client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


__all__ = ["PLUGIN_PREFIX", "SCATTER_MIN_BYTES", "DaskExecutor", "run_dask_chunk"]
