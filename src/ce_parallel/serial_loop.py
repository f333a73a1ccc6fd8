"""The serial loop: one implementation for the serial strategy, the fallback and auto.

Items run in the calling thread, in input order, in blocks sized from their measured cost to
take about ``SERIAL_BLOCK_TARGET_S``: a trivial function then costs what the plain loop costs,
while cancellation and the deadline are still checked between blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import length_hint
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any

from .errors import MapCancelledError
from .worker import call_with_rng

if TYPE_CHECKING:
    from .executor import MapCall
    from .metrics import ParallelMetrics

#: The serial loop runs items in blocks sized, from the measured cost, to take about this long:
#: a trivial function then runs in one or two blocks and costs what the plain loop costs, while
#: ``cancel()`` and timeouts are still noticed within about this long.
SERIAL_BLOCK_TARGET_S = 0.02


def check_call(call: MapCall, strategy: str, metrics: ParallelMetrics, finished: int) -> None:
    """Raise if ``call`` was cancelled or has passed its deadline (``finished`` items done)."""
    if call.cancelled.is_set():
        metrics.add(cancellations=1)
        raise MapCancelledError("map() was cancelled by cancel() or shutdown()")
    if call.deadline is not None and monotonic() >= call.deadline:
        metrics.add(timeouts=1)
        raise TimeoutError(
            f"map() did not finish within timeout={call.limit} s on strategy {strategy!r} "
            f"({finished} items finished)"
        )


def run_serially(
    call: MapCall,
    work: Sequence[Any],
    seeds: Sequence[Any] | None,
    *,
    strategy: str,
    metrics: ParallelMetrics,
    offset: int = 0,
    per_item_s: float | None = None,
    until: Callable[[], bool] | None = None,
) -> list[Any]:
    """``[call.fn(x) for x in work]`` in this thread, checking cancel and deadline between blocks.

    The first block is one item, or sized from ``per_item_s`` (or ``call.per_item_s``) when the
    cost of an item is already known. A user exception propagates with the failing item's
    index (counted from ``offset``) attached; ``StopIteration`` raised by ``fn`` is an error
    like any other. ``until``, checked before every block, ends the loop early once it returns
    true: the results of the items run so far, a prefix of ``work``, are returned.
    """
    from .executor import annotate_item_error

    fn, bar = call.fn, call.bar
    out: list[Any] = []
    n, pos = len(work), 0
    per_item_s = per_item_s or call.per_item_s
    block = 1 if not per_item_s else max(1, int(SERIAL_BLOCK_TARGET_S / per_item_s))
    while pos < n:
        if until is not None and until():
            break
        check_call(call, strategy, metrics, offset + pos)
        size = min(block, n - pos)
        if size == n - pos and isinstance(work, list):
            # the last block: iterate the list itself from pos instead of copying a slice
            rest = iter(work)
            rest.__setstate__(pos)  # type: ignore[attr-defined]
        else:
            rest = iter(work[pos : pos + size])
        tick = perf_counter()
        try:
            # a comprehension, not map(): cheaper from bytecode, and a StopIteration raised by
            # fn propagates instead of ending the loop early
            if seeds is None:
                part = [fn(item) for item in rest]
            else:
                part = [
                    call_with_rng(fn, item, seed)
                    for item, seed in zip(rest, seeds[pos : pos + size], strict=True)
                ]
        except Exception as exc:
            metrics.add(failures=1)
            # the iterator has already given up the failing item
            index = offset + pos + size - length_hint(rest) - 1
            annotate_item_error(exc, index, strategy, None)
            raise
        took = perf_counter() - tick
        if len(part) > len(out):
            # prepend the short head rather than copy the long tail onto it
            part[:0] = out
            out = part
        else:
            out += part
        pos += size
        if bar is not None:
            bar.update(size)
        # size the next block from the measured cost so that it takes about the target
        block = max(1, int(SERIAL_BLOCK_TARGET_S * size / took)) if took > 0 else block * 2
    return out


def run_one_block(fn: Any, work: list[Any], metrics: ParallelMetrics) -> tuple[list[Any], float]:
    """``[fn(x) for x in work]`` as the serial loop's one and only block; also its wall time.

    For a map whose known cost fits in one block: ``run_serially`` would check cancel and the
    deadline once, before the block, and the caller has checked them. The counters and the
    failing item's index are those ``run_serially`` gives.
    """
    n = len(work)
    rest = iter(work)
    started = perf_counter()
    try:
        out = [fn(item) for item in rest]
    except Exception as exc:
        from .executor import annotate_item_error

        metrics.add(tasks_submitted=n, maps=1, failures=1)
        annotate_item_error(exc, n - length_hint(rest) - 1, "sequential", None)
        raise
    wall = perf_counter() - started
    metrics.add_serial_map(n, wall)
    return out, wall


__all__ = ["SERIAL_BLOCK_TARGET_S", "check_call", "run_one_block", "run_serially"]
