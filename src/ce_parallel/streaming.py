"""Streaming maps: ``imap`` yields results in input order, ``imap_unordered`` as they finish.

Both read their input lazily: at most ``STREAM_CHUNKS_IN_FLIGHT_PER_WORKER`` chunks per worker
are read ahead of the consumer (sent, running, or finished and waiting for their turn), so a
generator of 10^6 items is never held in memory. Every guarantee of ``map`` holds:

* each item runs once; ``imap`` yields ``fn(x)`` in input order;
* a user exception propagates with its type and the failing item's index, when its place in the
  output is reached (``imap``) or when it arrives (``imap_unordered``); chunks after it are
  cancelled. The results of the failing chunk's items before it are not yielded: a chunk
  reports an error instead of its results;
* a chunk the machinery lost (a dead worker, something that cannot be pickled) is re-run
  serially in the consumer's thread and recorded as a fallback; the chunks still in flight
  finish, and the rest of the input then runs serially too (the conservative choice: the pool
  failed once already), after which the pool is released so the next call starts a fresh one;
* ``timeout`` is measured from the call that created the stream; ``cancel()`` and
  ``shutdown(cancel=True)`` of the executor stop it; ``progress=True`` counts items;
* the consumer may stop early (``break``, ``close()``, dropping the generator): queued chunks
  are cancelled, running ones finish in the background and their results are dropped, and the
  pool stays for reuse until ``shutdown()``.

Chunks grow from one item to about ``STREAM_CHUNK_TARGET_S`` of measured work each (at most
``STREAM_MAX_CHUNK_ITEMS``), so the first result comes quickly and tiny items travel in bulk.
``sequential`` (and a stream inside one of our workers) is a lazy serial loop in the
consumer's thread; ``auto`` streams on a ``threads`` executor of its configuration (see
``handoff``). One run record is emitted when the stream ends, however it ends.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from itertools import islice
from operator import length_hint
from typing import Any

from . import telemetry
from .checks import check_int, check_seconds
from .engine import POLL_INTERVAL_S
from .errors import BackendUnavailableError, ParallelExecutionError, SerializationError
from .executor import (
    MapCall,
    ParallelExecutor,
    annotate_chunk_error,
    annotate_item_error,
    default_chunksize,
)
from .handoff import (
    check_open,
    emit,
    lost_chunks_error,
    record_fallback,
    resolve_target,
    submits_incrementally,
    tracked,
)
from .progress import Progress
from .serial_loop import SERIAL_BLOCK_TARGET_S, check_call
from .worker import ChunkJob, ChunkOutcome

#: Chunks read ahead of the consumer per worker (sent, running, or done and not yet yielded).
#: Two keep every worker busy while the parent collects a finished chunk and sends the next;
#: more only hold more items in memory.
STREAM_CHUNKS_IN_FLIGHT_PER_WORKER = 2
#: A stream sizes its chunks, from the measured cost of the last one, to take about this long in
#: a worker: long enough that the per-chunk cost of a process pool (about 1 ms to send a chunk
#: and collect its results) stays below 5 %, short enough that results keep flowing.
STREAM_CHUNK_TARGET_S = 0.05
#: The most items in one chunk of a stream: bounds what is held in memory
#: (``workers x STREAM_CHUNKS_IN_FLIGHT_PER_WORKER x`` this many items and results) however
#: cheap the items are. See evaluation/streaming_memory.py.
STREAM_MAX_CHUNK_ITEMS = 2048


def imap(
    executor: ParallelExecutor,
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: bool = False,
    ordered: bool = True,
) -> Iterator[Any]:
    """An iterator of ``fn(x)`` for each ``x`` of ``items``, computed on ``executor``.

    ``ordered=False`` yields results as chunks finish. Arguments are checked now, and the
    ``timeout`` (else the config's) counts from now; the input is read only as results are
    consumed.
    """
    if not callable(fn):
        raise TypeError(f"imap() needs a callable as fn; got {type(fn).__name__}: {fn!r}")
    check_int("chunksize", chunksize, 1)
    check_seconds("timeout", timeout)
    executor.config.validate()
    check_open(executor)
    hint = length_hint(items)
    limit = timeout if timeout is not None else executor.config.timeout
    deadline = None if limit is None else time.monotonic() + limit
    return _stream(executor, fn, iter(items), hint, chunksize, limit, deadline, progress, ordered)


def imap_unordered(
    executor: ParallelExecutor,
    fn: Callable[..., Any],
    items: Iterable[Any],
    *,
    chunksize: int | None = None,
    timeout: float | None = None,
    progress: bool = False,
) -> Iterator[Any]:
    """Like ``imap``, yielding each result as soon as its chunk has finished."""
    return imap(
        executor,
        fn,
        items,
        chunksize=chunksize,
        timeout=timeout,
        progress=progress,
        ordered=False,
    )


def _stream(
    executor: ParallelExecutor,
    fn: Callable[..., Any],
    it: Iterator[Any],
    hint: int,
    chunksize: int | None,
    limit: float | None,
    deadline: float | None,
    progress: bool,
    ordered: bool,
) -> Iterator[Any]:
    from .engine import PooledExecutor

    bar = Progress(hint, f"ce-parallel {executor.name}") if progress else None
    call = MapCall(fn, chunksize, limit, deadline, bar)
    try:
        with tracked(executor, call.cancelled):
            target = resolve_target(executor, hint)
            cancel = True
            try:
                if target.executor is None:
                    # the strategy's own execute runs the first block, so its once-per-worker
                    # initializer runs as it would for map
                    own = not isinstance(executor, PooledExecutor) and not executor.record.chooses
                    yield from serial_stream(executor, call, it, first_via_execute=own)
                else:
                    yield from _PooledStream(target.executor, call, it, hint, ordered).run()
                cancel = False
            finally:
                target.close(cancel=cancel)
    finally:
        if bar is not None:
            bar.close()


def serial_stream(
    owner: ParallelExecutor,
    call: MapCall,
    it: Iterator[Any],
    *,
    offset: int = 0,
    first_via_execute: bool = False,
    count_map: bool = True,
) -> Iterator[Any]:
    """The serial loop, lazily: each result is yielded as soon as it is computed.

    Items are read in blocks sized to take about ``SERIAL_BLOCK_TARGET_S`` (the first is one
    item); cancel and deadline are checked between blocks. A user error propagates with its
    index (counted from ``offset``) after every result before it has been yielded.
    """
    fn, bar = call.fn, call.bar
    pos, block = offset, 1
    if count_map and not first_via_execute:
        owner.metrics.add(maps=1)
    while True:
        check_call(call, owner.name, owner.metrics, pos - offset)
        items = list(islice(it, block))
        if not items:
            return
        if first_via_execute and pos == 0:
            # the strategy's own execute runs the first item: its initializer runs as for map
            yield from owner.execute(call, items, None)
            pos += len(items)
            continue
        owner.metrics.add(tasks_submitted=len(items))
        tick = time.perf_counter()
        for k, item in enumerate(items):
            try:
                value = fn(item)
            except Exception as exc:
                owner.metrics.add(failures=1)
                annotate_item_error(exc, pos + k, owner.name, None)
                raise
            yield value
        took = time.perf_counter() - tick
        owner.metrics.add(tasks_completed=len(items))
        if bar is not None:
            bar.update(len(items))
        pos += len(items)
        grown = int(SERIAL_BLOCK_TARGET_S * len(items) / took) if took > 0 else 2 * block
        block = max(1, min(grown, STREAM_MAX_CHUNK_ITEMS))


class _PooledStream:
    """One stream on a pooled executor: read, send, collect, yield, fall back, record."""

    def __init__(
        self, executor: Any, call: MapCall, it: Iterator[Any], hint: int, ordered: bool
    ) -> None:
        self.ex = executor
        self.call = call
        self.it = it
        self.ordered = ordered
        self.fixed = call.chunksize or executor.config.instance_chunk_size
        # a known length spreads over the workers as map does; the cap bounds memory
        self.cap = min(STREAM_MAX_CHUNK_ITEMS, default_chunksize(hint, executor.workers))
        if hint <= 0:
            self.cap = STREAM_MAX_CHUNK_ITEMS
        self.size = self.fixed or 1
        self.pending: dict[Future[ChunkOutcome], int] = {}
        self.info: dict[int, tuple[int, list[Any]]] = {}
        self.ready: dict[int, list[Any]] = {}
        self.error: BaseException | None = None
        self.error_chunk: int | None = None
        self.degraded = False
        self.read = 0
        self.chunks = 0
        self.yielded = 0
        self.busy = 0.0
        self.fallbacks = 0
        self.chunks_out = 0

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> Iterator[Any]:
        ex, call = self.ex, self.call
        started = time.perf_counter()
        failure: BaseException | None = None
        kill = False
        try:
            incremental = submits_incrementally(ex)
            window = max(1, STREAM_CHUNKS_IN_FLIGHT_PER_WORKER * ex.workers)
            setup = ex.worker_setup()
            exhausted = False
            while True:
                if self.error is None and not self.degraded and not exhausted:
                    room = window - len(self.pending) - len(self.ready)
                    if not incremental and self.pending:
                        room = 0  # the previous batch must finish first
                    exhausted = self._send(room, setup)
                yield from self._hand_out()
                if self.error is not None and not self.pending:
                    raise self.error
                if not self.pending:
                    if self.degraded:
                        # the pool failed once: the rest of the input runs here
                        ex.release_pool(kill=True)
                        for value in serial_stream(
                            ex, call, self.it, offset=self.read, count_map=False
                        ):
                            self.read += 1
                            self.yielded += 1
                            yield value
                        return
                    if exhausted:
                        return
                    continue
                check_call(call, ex.name, ex.metrics, self.yielded)
                timeout = POLL_INTERVAL_S
                if call.deadline is not None:
                    timeout = max(0.0, min(timeout, call.deadline - time.monotonic()))
                done, _ = wait(list(self.pending), timeout=timeout, return_when=FIRST_COMPLETED)
                for fut in done:
                    number = self.pending.pop(fut, None)
                    if number is not None:  # else dropped by an error settled just before
                        self._settle(fut, number)
        except GeneratorExit:
            raise
        except BaseException as exc:
            failure = exc
            # a user error has cancelled what it could already; a timeout, cancel or Ctrl-C
            # leaves no work running behind the caller
            kill = exc is not self.error
            raise
        finally:
            if self.pending:
                pending, self.pending = list(self.pending), {}
                ex.abort(pending, kill=kill)
            wall = time.perf_counter() - started
            ex.metrics.add(
                tasks_submitted=self.read,
                tasks_completed=self.yielded,
                chunks=self.chunks,
                maps=1,
                total_duration=wall,
                busy_time=self.busy,
            )
            record = telemetry.run_record(
                strategy=ex.name,
                items=self.read,
                chunks=self.chunks,
                workers=ex.workers,
                wall_time_s=wall,
                busy_time_s=self.busy,
                fallbacks=self.fallbacks,
                error=failure,
            )
            emit(ex, "run", {**record, "stream": "ordered" if self.ordered else "unordered"})

    def _send(self, room: int, setup: Any) -> bool:
        """Read and send up to ``room`` chunks; True when the input has run out."""
        jobs: list[ChunkJob] = []
        exhausted = False
        while room > 0:
            items = list(islice(self.it, self.size))
            if not items:
                exhausted = True
                break
            self.info[self.chunks] = (self.read, items)
            jobs.append(
                ChunkJob(
                    fn=self.call.fn,
                    start=self.read,
                    items=items,
                    setup=setup,
                    check_pickle=self.ex.record.pickles_work,
                )
            )
            self.read += len(items)
            self.chunks += 1
            room -= 1
        if not jobs:
            return exhausted
        first = self.chunks - len(jobs)
        try:
            futures = self.ex.submit_chunks(jobs)
        except Exception as exc:
            # the pool refused the work: nothing of it ran
            for k in range(len(jobs)):
                self._lost(first + k, exc)
        else:
            for k, fut in enumerate(futures):
                self.pending[fut] = first + k
        return exhausted

    def _hand_out(self) -> Iterator[Any]:
        if self.ordered:
            nxt = self.chunks_out
            while nxt in self.ready:
                part = self.ready.pop(nxt)
                self.info.pop(nxt, None)
                nxt += 1
                self.chunks_out = nxt
                self.yielded += len(part)
                yield from part
            if self.error is not None and nxt == self.error_chunk:
                raise self.error
        else:
            for number in list(self.ready):
                part = self.ready.pop(number)
                self.info.pop(number, None)
                self.yielded += len(part)
                yield from part
            if self.error is not None:
                raise self.error

    # -- one finished chunk -----------------------------------------------------------------

    def _settle(self, fut: Future[ChunkOutcome], number: int) -> None:
        try:
            outcome = fut.result()
        except CancelledError:
            if self.error is None:
                # cancelled by the pool itself (released under us): a lost chunk
                self._lost(number, BackendUnavailableError("the pool dropped the chunk"))
            return
        except Exception as exc:
            self._lost(number, exc)
            return
        self.busy += outcome.busy_seconds
        if outcome.machinery_error is not None:
            self._lost(number, outcome.machinery_error)
            return
        if outcome.error is not None:
            self._user_error(number, annotate_chunk_error(outcome, self.ex.name))
            return
        try:
            part = outcome.take_results()
        except SerializationError as exc:
            self._lost(number, exc)
            return
        start, items = self.info[number]
        if part is None or len(part) != len(items):
            self._lost(
                number,
                ParallelExecutionError(
                    f"chunk of items {start}..{start + len(items) - 1} returned "
                    f"{0 if part is None else len(part)} results for {len(items)} items"
                ),
            )
            return
        self.ready[number] = part
        if self.call.bar is not None:
            self.call.bar.update(len(items))
        if not self.fixed:
            per_item = outcome.busy_seconds / len(items)
            grown = int(STREAM_CHUNK_TARGET_S / per_item) if per_item > 0 else 2 * self.size
            self.size = max(1, min(grown, self.cap))

    def _user_error(self, number: int, error: BaseException) -> None:
        """Keep the error the serial loop would raise; cancel the chunks after it."""
        self.ex.metrics.add(failures=1)
        if self.error is None or (
            self.ordered and self.error_chunk is not None and number < self.error_chunk
        ):
            self.error, self.error_chunk = error, number
        first = self.error_chunk
        assert first is not None
        # imap still yields every chunk before the error, so only those after it stop
        stop = [f for f, n in self.pending.items() if not self.ordered or n > first]
        for fut in stop:
            del self.pending[fut]
        for n in [n for n in self.ready if self.ordered and n > first]:
            del self.ready[n]
        if stop:
            self.ex.abort(stop, kill=False)

    def _lost(self, number: int, failure: BaseException) -> None:
        """The machinery lost a chunk: re-run it here, serially, and record it (or raise)."""
        ex = self.ex
        start, items = self.info[number]
        recover = ex.config.fallback_to_serial
        self.fallbacks += 1
        error_type = record_fallback(
            ex, failure, action="serial" if recover else "raise", items=len(items), chunks=[number]
        )
        if not recover:
            raise lost_chunks_error(error_type, ex.name, failure, range(start, start + len(items)))
        if ex.config.force_serial_on_failure and not self.degraded:
            warnings.warn(
                f"ce-parallel: strategy {ex.name!r} failed ({type(failure).__name__}: "
                f"{failure}); re-running the stream's unfinished items serially",
                UserWarning,
                stacklevel=4,
            )
        self.degraded = True
        try:
            part = ex.run_serially(self.call, items, None, offset=start)
        except Exception as exc:
            self._user_error(number, exc)
            return
        self.ready[number] = part


__all__ = [
    "STREAM_CHUNKS_IN_FLIGHT_PER_WORKER",
    "STREAM_CHUNK_TARGET_S",
    "STREAM_MAX_CHUNK_ITEMS",
    "imap",
    "imap_unordered",
    "serial_stream",
]
