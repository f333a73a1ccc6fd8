"""``PooledExecutor``: the engine shared by every strategy that runs chunks on a pool.

One ``execute`` does what all pooled strategies have in common: start the pool, then cut the
items into chunks for the pool's real size, submit them, wait with the call's deadline and
cancel flag, put results back in input order (checking that every chunk returned one result per
item), attach the failing item's index to a user exception, fall back when the machinery breaks,
and record metrics and telemetry. A strategy fills in four hooks:

``start_pool()``
    create the pool if there is none (idempotent); raise if it cannot start.
``submit_chunks(jobs)``
    send every ``ChunkJob`` to the pool; one ``concurrent.futures.Future`` per job, in order.
``abort(pending, kill)``
    stop queued or running chunks after an error, timeout or cancel (a default is provided).
``release_pool(kill)``
    release the pool and every worker it started (idempotent).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, ClassVar

from . import telemetry
from .answers import Answers
from .chunks import steady_cost
from .costs import function_key
from .errors import (
    BackendUnavailableError,
    ExecutorClosedError,
    ParallelExecutionError,
    SerializationError,
)
from .executor import MapCall, ParallelExecutor, annotate_chunk_error, create_executor
from .handoff import lost_chunks_error, record_fallback, start_failed
from .serial_loop import check_call
from .shared_arrays import sharing_possible
from .warmup import PoolWarmUps
from .worker import ChunkJob, ChunkOutcome, WorkerSetup

if TYPE_CHECKING:
    from .result_segments import Tracker

#: How often (seconds) a waiting ``map`` wakes to check its deadline and cancel flag; this
#: bounds how late a timeout, ``cancel()`` or ``shutdown(cancel=True)`` is noticed.
POLL_INTERVAL_S = 0.05
#: How many functions' steady item costs an executor keeps for planning chunks.
ITEM_COSTS_SIZE = 64

_last_map = threading.local()


def _keep(_dead: object) -> None:
    """A collected function's entry stays until its executor's bounded memory is cleared."""


def caller_items_of_last_map() -> int:
    """How many items the caller ran itself (a pool warming up) in this thread's last map."""
    return getattr(_last_map, "caller_items", 0)


def clear_last_map() -> None:
    """Forget this thread's last map (before a run whose count is read afterwards)."""
    _last_map.caller_items = 0


class _Arrivals:
    """The futures of a map as they finish, for the thread that collects them.

    Every future reports itself once; the collector is woken only when it has something to
    do: the last future finished, one failed or was cancelled (the chunks after it are to be
    stopped), or a progress bar is to advance. A chunk that merely succeeded waits in the
    list: a wake-up costs the collector the GIL, which the workers of a thread pool need and
    which, on two CPUs, takes a CPU from a process pool's worker.
    """

    def __init__(self, expected: int, eager: bool) -> None:
        self._done: deque[Future[ChunkOutcome]] = deque()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._left = expected
        self._eager = eager

    def put(self, fut: Future[ChunkOutcome]) -> None:
        """Called once by each future when it is done (in whichever thread finished it)."""
        self._done.append(fut)
        with self._lock:
            self._left -= 1
            last = self._left <= 0
        if last or self._eager or _went_wrong(fut):
            self._ready.set()

    def take(self, timeout: float) -> list[Future[ChunkOutcome]]:
        """The futures done since the last call, once woken; waits up to ``timeout``."""
        if not self._ready.wait(timeout):
            return []
        # cleared before the list is read: a future that reports itself meanwhile sets it again
        self._ready.clear()
        done = []
        while self._done:
            done.append(self._done.popleft())
        return done


def _went_wrong(fut: Future[ChunkOutcome]) -> bool:
    """Whether a done chunk's future was cancelled, failed, or carries an error."""
    if fut.cancelled() or fut.exception() is not None:
        return True
    outcome = fut.result()
    return outcome.error is not None or outcome.machinery_error is not None


class PooledExecutor(ParallelExecutor):
    """A strategy that runs chunks of items on a pool of workers (see the module's hooks)."""

    #: the pool's warm-ups that may still run (a strategy that warms its workers sets it)
    _warming: PoolWarmUps | None = None
    #: whether the workers send large result buffers back through ``/dev/shm`` files
    #: (``result_segments``), and the resource tracker they share with the caller: child
    #: processes of this machine
    _results_through_files: ClassVar[Tracker | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: seconds per item in the workers, per function (weak key) whose last map ran steadily
        self._item_costs: Answers[Hashable, float] = Answers(ITEM_COSTS_SIZE)

    # -- hooks ------------------------------------------------------------------------------

    @abstractmethod
    def start_pool(self) -> None:
        """Create the pool if there is none (idempotent). Raise if it cannot start."""

    @abstractmethod
    def submit_chunks(self, jobs: list[ChunkJob]) -> list[Future[ChunkOutcome]]:
        """Send every job to the pool; one future per job, in the same order."""

    def abort(self, pending: Iterable[Future[ChunkOutcome]], kill: bool) -> None:
        """Stop work that is still queued or running (after an error, timeout or cancel).

        Queued chunks are cancelled. With ``kill``, a strategy whose workers are its own child
        processes releases its pool at once: a busy worker process cannot be interrupted
        politely, and the next map starts a fresh pool. (Its futures are left to the killed
        pool, which fails them itself: cancelling them first makes loky's manager thread trip
        over their state.) A thread cannot be killed: its current chunk finishes and its result
        is discarded.
        """
        if kill and self.record.separate_processes:
            self.release_pool(kill=True)
            return
        for fut in pending:
            fut.cancel()

    @abstractmethod
    def release_pool(self, kill: bool) -> None:
        """Release the pool and every worker it started (idempotent); ``kill`` does not wait."""

    def warm_up(
        self, call: MapCall, work: list[Any], setup: WorkerSetup
    ) -> Callable[[], bool] | None:
        """Start readying the workers for this map (loading what it shares), or None.

        Returns a check that is true once they are ready. Until then the caller runs the map's
        first items itself (``_help_while_warming``, see ``warmup``) and the pool gets the rest
        afterwards.
        """
        return None

    def wait_until_warm(self, timeout: float | None = None) -> bool:
        """Block until the warm-up tasks sent so far have ended (see ``warm_up``); True once
        they have, False on timeout. For measurements that must start on a warm pool."""
        warming = self._warming
        return True if warming is None else warming.wait(timeout)

    def plan_chunks(
        self, n: int, chunksize: int | None, steady_item_s: float | None = None
    ) -> list[tuple[int, int]]:
        """Cut ``n`` items into ``(start, stop)`` ranges for ``self.workers`` workers.

        A chunk size given by the call or the config is kept as given. Otherwise the items are
        cut into ``chunks.chunk_count`` ranges of equal size (within one item), fewer when an
        earlier map of the same function measured a ``steady_item_s``. Called after
        ``start_pool``, so a pool that learns its size on start (a Dask cluster) is planned for
        its real size.
        """
        from .chunks import chunk_count, even_ranges

        size = chunksize or self.config.instance_chunk_size
        if size:
            return [(start, min(start + size, n)) for start in range(0, n, size)]
        cheap = not self.record.pickles_work
        return even_ranges(n, chunk_count(n, self.workers, cheap, steady_item_s))

    def _steady_item_s(self, key: Hashable | None) -> float | None:
        """Seconds per item the last map of the function under ``key`` took in the workers, if
        that map ran steadily (``heuristics.CHUNK_STEADY_SPREAD``)."""
        if key is None:
            return None
        return self._item_costs.get(key)

    def _note_item_costs(self, key: Hashable | None, per_item: list[float]) -> None:
        """Remember how steadily the function under ``key`` ran in the workers' chunks."""
        if key is None or len(per_item) < 2 or not self.record.pickles_work:
            return
        steady = steady_cost(per_item)
        if steady is not None:
            self._item_costs.put(key, steady)
        else:
            self._item_costs.pop(key, None)

    def worker_setup(self) -> WorkerSetup:
        """The once-per-worker set-up that travels with every chunk of this executor."""
        from .resources import threads_per_worker

        record = self.record
        return WorkerSetup(
            token=self._token,
            per_thread=not record.pickles_work,
            blas_threads=(
                threads_per_worker(self.budget.count, self.workers)
                if record.separate_processes
                else None
            ),
            initializer=self.config.worker_initializer,
            init_args=tuple(self.config.worker_init_args or ()),
            caller_pid=os.getpid(),
            watch_parent=record.separate_processes,
            share_results=self._results_through_files if sharing_possible() else None,
        )

    # -- the engine -------------------------------------------------------------------------

    def execute(self, call: MapCall, work: list[Any], seeds: list[Any] | None) -> list[Any]:
        """Start the pool, plan, submit, collect in order, fall back; record the run."""
        started = time.perf_counter()
        chunks: list[tuple[int, int]] = []
        fallbacks = 0
        caller_items = 0
        error: BaseException | None = None
        busy = 0.0
        stop = threading.Event()
        try:
            try:
                with self._life_lock:
                    # after shutdown() nothing starts, not even a pool for a map that was
                    # already on its way in
                    self._check_open()
                    self.start_pool()
            except ExecutorClosedError:
                raise
            except Exception as start_error:
                fallbacks = 1
                done = self._start_failed(start_error, call, work, seeds)
                self.metrics.add(tasks_submitted=len(work), tasks_completed=len(done), maps=1)
                return done
            self.metrics.add(tasks_submitted=len(work), maps=1)
            setup = self.worker_setup()
            helped = self._help_while_warming(call, work, seeds, setup)
            caller_items = len(helped)
            head = [(0, caller_items)] if caller_items else []
            key = function_key(call.fn, _keep) if self.record.pickles_work else None
            planned = self.plan_chunks(
                len(work) - caller_items, call.chunksize, self._steady_item_s(key)
            )
            chunks = head + [(a + caller_items, b + caller_items) for a, b in planned]
            self.metrics.add(chunks=len(chunks))
            outcomes: list[list[Any] | None] = [helped] if head else []
            outcomes += [None] * (len(chunks) - len(head))
            sent = chunks[len(head) :]
            failures: dict[int, BaseException] = {}
            try:
                jobs = [self._job(call, work, seeds, a, b, setup, stop) for a, b in sent]
                futures = self.submit_chunks(jobs) if jobs else []
            except Exception as exc:
                # the pool refused the work: nothing ran, all is unfinished
                failures = {i: exc for i in range(len(head), len(chunks))}
            else:
                rest = outcomes[len(head) :]
                per_item: list[float] = []
                try:
                    busy, lost = self._collect(futures, sent, rest, call, per_item)
                finally:
                    # every chunk this map still needs has finished: thread workers busy with
                    # a chunk it dropped (after an error, timeout, cancel) take no new item
                    stop.set()
                    outcomes[len(head) :] = rest
                failures = {i + len(head): exc for i, exc in lost.items()}
                if not failures:
                    self._note_item_costs(key, per_item)
            if failures:
                fallbacks = 1
                self._fall_back(call, work, seeds, chunks, outcomes, failures)
        except BaseException as exc:
            error = exc
            raise
        finally:
            wall = time.perf_counter() - started
            _last_map.caller_items = caller_items
            self.metrics.add(total_duration=wall, busy_time=busy)
            self._emit(
                "run",
                telemetry.run_record(
                    strategy=self.name,
                    items=len(work),
                    chunks=len(chunks),
                    workers=self.workers,
                    wall_time_s=wall,
                    busy_time_s=busy,
                    fallbacks=fallbacks,
                    error=error,
                    caller_items=caller_items,
                ),
            )
        results: list[Any] = []
        for (a, b), part in zip(chunks, outcomes, strict=True):
            if part is None or len(part) != b - a:
                # every chunk ran, here or in the fallback, and gave one result per item
                raise ParallelExecutionError(
                    f"strategy {self.name!r}: the chunk of items {a}..{b - 1} gave "
                    f"{'no' if part is None else len(part)} results for {b - a} items",
                    incomplete=range(a, b),
                )
            results.extend(part)
        self.metrics.add(tasks_completed=len(results))
        return results

    def _help_while_warming(
        self, call: MapCall, work: list[Any], seeds: list[Any] | None, setup: WorkerSetup
    ) -> list[Any]:
        """Run the map's first items here while the workers warm up; their results, in order.

        Nothing is sent to the pool until its warm-up tasks are done, so no item runs twice;
        the loop stops between blocks of about ``SERIAL_BLOCK_TARGET_S`` once they are. A
        warm-up that fails is done too: the chunks then meet the same failure and fall back.
        """
        if len(work) < 2:
            return []
        try:
            ready = self.warm_up(call, work, setup)
        except Exception:
            return []
        if ready is None or ready():
            return []
        return self.run_serially(call, work, seeds, until=ready)

    def _job(
        self,
        call: MapCall,
        work: list[Any],
        seeds: list[Any] | None,
        a: int,
        b: int,
        setup: WorkerSetup,
        stop: threading.Event | None = None,
    ) -> ChunkJob:
        pickles = self.record.pickles_work
        return ChunkJob(
            fn=call.fn,
            start=a,
            items=work[a:b],
            seeds=None if seeds is None else seeds[a:b],
            setup=setup,
            check_pickle=pickles,
            # an event does not pickle; workers in this process check it between items
            stop=None if pickles else stop,
        )

    def _start_failed(
        self, exc: Exception, call: MapCall, work: list[Any], seeds: list[Any] | None
    ) -> list[Any]:
        """The pool could not start: run the whole map on the next strategy of the chain.

        With ``fallback="raise"`` this raises ``BackendUnavailableError`` (or the more specific
        error the cause shows) listing every item. Otherwise one fallback record names this
        step; the next executor lives for this map only, so the next map tries this strategy's
        pool again, and its own start failure is the next step of the chain.
        """
        following = start_failed(self, exc, len(work))
        if following in ("sequential", self.name):
            return self.run_serially(call, work, seeds)
        next_executor = create_executor(
            self.config.replace(strategy=following),
            max_workers=self.workers,
            resources=self.resources,
        )
        try:
            return next_executor.execute(call, work, seeds)
        finally:
            next_executor.shutdown()

    def _collect(
        self,
        futures: Sequence[Future[ChunkOutcome]],
        chunks: list[tuple[int, int]],
        outcomes: list[list[Any] | None],
        call: MapCall,
        per_item: list[float],
    ) -> tuple[float, dict[int, BaseException]]:
        """Wait for every chunk; return busy seconds and the chunks the machinery lost.

        Appends each finished chunk's busy seconds per item to ``per_item``.

        On the first user error the chunks not yet running are cancelled; running chunks before
        it are awaited so that the error raised is the one the serial loop would raise.
        """
        index_of = {fut: i for i, fut in enumerate(futures)}
        pending = set(futures)
        dropped: set[Future[ChunkOutcome]] = set()
        failures: dict[int, BaseException] = {}
        user_errors: dict[int, ChunkOutcome] = {}
        busy = 0.0
        finished = 0
        # each future reports itself once when done: a wake costs O(1), not a new waiter on
        # every pending future, and comes only when there is something to do (``_Arrivals``)
        arrivals = _Arrivals(len(futures), eager=call.bar is not None)
        for fut in futures:
            fut.add_done_callback(arrivals.put)
        try:
            while pending:
                timeout = POLL_INTERVAL_S
                if call.deadline is not None:
                    timeout = max(0.0, min(timeout, call.deadline - time.monotonic()))
                done = arrivals.take(timeout)
                for fut in done:
                    if fut not in pending:
                        continue  # dropped after an error: it was cancelled or is ignored
                    pending.discard(fut)
                    i = index_of[fut]
                    try:
                        outcome = fut.result()
                    except CancelledError:
                        if fut not in dropped:
                            # cancelled by the pool itself (released under us): a lost chunk
                            failures[i] = BackendUnavailableError("the pool dropped the chunk")
                        continue
                    except Exception as exc:
                        failures[i] = exc
                        continue
                    busy += outcome.busy_seconds
                    self._report_hooks(outcome)
                    if outcome.machinery_error is not None:
                        failures[i] = outcome.machinery_error
                    elif outcome.error is not None:
                        user_errors[i] = outcome
                    else:
                        a, b = chunks[i]
                        try:
                            part = outcome.take_results()
                        except SerializationError as exc:
                            failures[i] = exc
                            continue
                        if part is None or len(part) != b - a:
                            failures[i] = ParallelExecutionError(
                                f"chunk of items {a}..{b - 1} returned "
                                f"{0 if part is None else len(part)} results for {b - a} items"
                            )
                            continue
                        outcomes[i] = part
                        per_item.append(outcome.busy_seconds / (b - a))
                        finished += b - a
                        if call.bar is not None:
                            call.bar.update(b - a)
                if user_errors:
                    first = min(user_errors)
                    stop = {f for f in pending if f.cancel() or index_of[f] > first}
                    if stop:
                        pending -= stop
                        dropped |= stop
                        self.abort(stop, kill=False)
                if pending:
                    check_call(call, self.name, self.metrics, finished)
        except BaseException:
            # KeyboardInterrupt, timeout, cancel: leave no work running behind the caller
            self.abort(pending, kill=True)
            raise
        if user_errors:
            self.metrics.add(failures=1)
            raise annotate_chunk_error(user_errors[min(user_errors)], self.name)
        return busy, failures

    def _report_hooks(self, outcome: ChunkOutcome) -> None:
        if outcome.fork_hooks is not None:
            ran, failed = outcome.fork_hooks
            self._emit(
                "fork_hooks",
                {"strategy": self.name, "pid": outcome.pid, "hooks": ran, "failed": failed},
            )

    def _fall_back(
        self,
        call: MapCall,
        work: list[Any],
        seeds: list[Any] | None,
        chunks: list[tuple[int, int]],
        outcomes: list[list[Any] | None],
        failures: dict[int, BaseException],
    ) -> None:
        """The machinery lost some chunks: re-run exactly those serially, or raise.

        Not when the map was cancelled or the executor shut down meanwhile (a pool released
        under a running map loses its chunks too): that map raises instead.
        """
        check_call(call, self.name, self.metrics, 0)
        self._check_open()
        first = failures[min(failures)]
        unfinished = [i for i, part in enumerate(outcomes) if part is None]
        items = [k for i in unfinished for k in range(*chunks[i])]
        self.release_pool(kill=True)  # a broken pool is replaced on the next map
        recover = self.config.fallback_to_serial
        error_type = record_fallback(
            self,
            first,
            action="serial" if recover else "raise",
            items=len(items),
            chunks=unfinished,
        )
        if not recover:
            raise lost_chunks_error(error_type, self.name, first, items)
        if self.config.force_serial_on_failure:
            warnings.warn(
                f"ce-parallel: strategy {self.name!r} failed ({type(first).__name__}: {first}); "
                f"re-running {len(items)} unfinished items serially",
                UserWarning,
                stacklevel=5,
            )
        for i in unfinished:
            a, b = chunks[i]
            outcomes[i] = self.run_serially(
                call, work[a:b], None if seeds is None else seeds[a:b], offset=a
            )


__all__ = ["POLL_INTERVAL_S", "PooledExecutor", "caller_items_of_last_map", "clear_last_map"]
