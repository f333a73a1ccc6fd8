"""``DaskExecutor``: chunks run as tasks on a Dask distributed cluster.

The executor runs on an existing scheduler (``ParallelConfig.dask_address``, which
``CE_PARALLEL_DASK_ADDRESS`` sets), on an existing ``distributed.Client`` passed as ``client=``,
or on a ``LocalCluster`` of its own sized from the CPU budget (worker processes, one thread each,
no dashboard). Only what it started is closed on ``shutdown()``: its own cluster and client, or
the client it opened to a given address; a client passed in stays open.

Each chunk is one task submitted with ``pure=False``, so identical chunks are separate tasks that
each run once. A bridge thread gathers finished tasks and completes one
``concurrent.futures.Future`` per chunk, so waiting, deadlines and cancellation work exactly as
for the other strategies. A function whose pickle is large (a model, a table) is scattered to
every worker once per map instead of travelling inside every task. Lost workers
(``KilledWorker``), closed connections and unreachable schedulers are failures of the machinery:
they reach ``ParallelExecutor`` as ``WorkerCrashedError`` / ``BackendUnavailableError`` and fall
back. dask is imported only when a pool starts, so ``import ce_parallel`` never loads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from ..config import ParallelConfig
from ..engine import PooledExecutor
from ..errors import BackendUnavailableError, SerializationError, WorkerCrashedError
from ..resources import Resources, numeric_thread_env, threads_per_worker
from ..worker import IN_WORKER_ENV, ChunkJob, ChunkOutcome, WorkerSetup, run_chunk

#: A function whose cloudpickle is at least this many bytes is scattered to every worker once
#: per map instead of being pickled into every chunk task. Below it, the copy per task costs
#: less than the scatter round trip (a broadcast to all workers plus one scheduler message); at
#: 1 MiB and 16 chunks per map the per-task copies already move 16 MiB through the scheduler,
#: and distributed itself warns about task graphs of a few MiB.
SCATTER_MIN_BYTES = 1024 * 1024
#: How often (seconds) the bridge thread wakes to notice that it was told to stop.
BRIDGE_POLL_S = 0.1
#: Seconds allowed for connecting to a given scheduler before the strategy falls back.
CONNECT_TIMEOUT_S = 10.0
#: Task states of a dask future that will not change any more.
_FINAL_STATES = frozenset({"finished", "error", "cancelled", "lost"})
#: Exception type names that mean a worker or the connection to it was lost.
_LOST_WORKER_ERRORS = frozenset({"KilledWorker", "CommClosedError", "StreamClosedError"})


def _missing_fn(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("this chunk's function travels separately (scattered) and was not given")


def _run_with_shared_fn(fn: Callable[..., Any], job: ChunkJob) -> ChunkOutcome:
    """Run a chunk whose function was scattered: dask passes the worker's copy as ``fn``."""
    return run_chunk(dataclasses.replace(job, fn=fn))


def _machinery_error(exc: BaseException) -> BaseException:
    """Name a dask failure as the typed error ``ParallelExecutor`` classifies for fallback."""
    name = type(exc).__name__
    if name in _LOST_WORKER_ERRORS:
        error: BaseException = WorkerCrashedError(f"dask lost a worker: {name}: {exc}")
    elif "serializ" in f"{exc}".lower() or "pickl" in f"{exc}".lower():
        error = SerializationError(f"dask could not serialize a chunk: {name}: {exc}")
    else:
        return exc
    error.__cause__ = exc
    return error


def _settle(target: Future[ChunkOutcome], setter: Callable[[Any], None], value: Any) -> None:
    # A future dropped by the caller may have been cancelled meanwhile; its value is not needed.
    with contextlib.suppress(InvalidStateError):
        setter(value)


class _Bridge:
    """Completes one ``concurrent.futures.Future`` per dask future, from one thread."""

    def __init__(self, pairs: list[tuple[Any, Future[ChunkOutcome]]]) -> None:
        self._lock = threading.Lock()
        self._remaining: dict[Any, Future[ChunkOutcome]] = dict(pairs)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="ce-parallel-dask-bridge", daemon=True
        )
        self._thread.start()

    def drop(self, targets: Iterable[Future[ChunkOutcome]]) -> list[Any]:
        """Stop tracking ``targets``; return their dask futures (for the caller to cancel)."""
        wanted = set(targets)
        with self._lock:
            lost = [d for d, f in self._remaining.items() if f in wanted]
            for d in lost:
                del self._remaining[d]
        return lost

    def stop(self) -> list[Any]:
        """Stop the thread; fail every chunk still tracked; return their dask futures."""
        self._stop.set()
        with self._lock:
            left, self._remaining = self._remaining, {}
        for fut in left.values():
            _settle(fut, fut.set_exception, BackendUnavailableError("the dask pool was released"))
        self._thread.join()
        return list(left)

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        from distributed import wait

        while not self._stop.is_set():
            with self._lock:
                watched = list(self._remaining)
            if not watched:
                return
            failed = False
            try:
                wait(watched, timeout=BRIDGE_POLL_S, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
            except Exception:
                # futures cancelled meanwhile, or a closing client: the states below tell
                failed = True
            final = [dfut for dfut in watched if dfut.status in _FINAL_STATES]
            for dfut in final:
                self._resolve(dfut)
            if failed and not final:
                self._stop.wait(BRIDGE_POLL_S)  # do not spin on a client that keeps failing

    def _resolve(self, dfut: Any) -> None:
        with self._lock:
            target = self._remaining.pop(dfut, None)
        if target is None:
            return
        status = dfut.status
        try:
            if status == "finished":
                _settle(target, target.set_result, dfut.result())
                return
            if status == "error":
                failure: BaseException = _machinery_error(dfut.exception())
            else:
                failure = WorkerCrashedError(f"dask reported the chunk's task as {status}")
        except Exception as exc:  # gathering the result failed: the data or its worker is gone
            failure = _machinery_error(exc)
        _settle(target, target.set_exception, failure)


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
        self._bridge: _Bridge | None = None
        self._shared: Any = None  # the scattered function of the current map

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
            if self._cluster is None:
                # A cluster we did not size: plan chunks for the threads it actually has.
                threads = sum(self._client.nthreads().values())
                if threads > 0:
                    self.workers = threads
                    self.metrics.max_workers = threads

    def worker_setup(self) -> WorkerSetup:
        """As for every strategy, without numeric caps on a cluster we did not size."""
        setup = super().worker_setup()
        if self._cluster is None:
            # Remote workers size their numeric libraries from their own node (dask's nanny
            # already limits them); our local budget says nothing about that machine.
            setup = dataclasses.replace(setup, blas_threads=None)
        return setup

    def submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        import cloudpickle

        client = self._client
        assert client is not None
        self._finish_bridge()
        fn = jobs[0].fn
        shared = None
        try:
            fn_bytes = len(cloudpickle.dumps(fn))
        except Exception as exc:
            # every task would carry it: nothing can be submitted
            raise SerializationError(
                f"the function cannot be pickled for the dask workers: {type(exc).__name__}: {exc}"
            ) from exc
        if len(jobs) > 1 and fn_bytes >= SCATTER_MIN_BYTES:
            shared = client.scatter(fn, broadcast=True, hash=False)
        self._shared = shared
        submitted: list[Any] = []
        try:
            for job in jobs:
                if shared is None:
                    submitted.append(client.submit(run_chunk, job, pure=False))
                else:
                    light = dataclasses.replace(job, fn=_missing_fn)
                    submitted.append(client.submit(_run_with_shared_fn, shared, light, pure=False))
        except BaseException as exc:
            # what was already submitted must not keep running while everything falls back
            client.cancel(submitted)
            if isinstance(exc, Exception):
                raise _machinery_error(exc) from exc
            raise
        futures: list[Future[ChunkOutcome]] = [Future() for _ in jobs]
        for fut in futures:
            # A dask task cannot report when it starts; treating every chunk as running means
            # that on a user error the earlier chunks are awaited and only later ones cancelled.
            fut.set_running_or_notify_cancel()
        self._bridge = _Bridge(list(zip(submitted, futures, strict=True)))
        return futures

    def _finish_bridge(self) -> None:
        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            self._cancel(bridge.stop())
        self._shared = None

    def _cancel(self, dask_futures: list[Any]) -> None:
        client = self._client
        if client is not None and dask_futures:
            with contextlib.suppress(Exception):
                client.cancel(dask_futures)

    def abort(self, pending: Iterable[Future[ChunkOutcome]], kill: bool) -> None:
        pending = list(pending)
        bridge = self._bridge
        if bridge is not None:
            self._cancel(bridge.drop(pending))
        for fut in pending:
            _settle(fut, fut.set_exception, BackendUnavailableError("the chunk was cancelled"))
        if kill and self._cluster is not None:
            # A running task cannot be interrupted; our own workers are stopped with the
            # cluster and the next map starts a fresh one. A cluster we were given keeps
            # running the few tasks already started: they are cancelled, their results dropped.
            self.release_pool(kill=True)

    def release_pool(self, kill: bool) -> None:
        """Close what this executor started: its cluster and client, or its client only."""
        with self._pool_lock:
            self._finish_bridge()
            client, self._client = self._client, None
            cluster, self._cluster = self._cluster, None
            owns, self._owns_client = self._owns_client, False
        if owns and client is not None:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


__all__ = ["SCATTER_MIN_BYTES", "DaskExecutor"]
