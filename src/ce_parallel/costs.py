"""What ce-parallel has measured in this process: per-function costs and pool start-up costs.

Every front door decides from the same memory: the facade, the calibrated-explanations adapter
(which goes through the facade) and ``auto``. A function's measurement is remembered under a
*weak* key, so remembering never keeps a function, or the model a bound method or a partial
carries, alive: when it is collected, its entry goes with it. A measurement is checked by what
the next run measures: a run far from its prediction replaces what was remembered.

Start-up costs are measured the first time a pool of a strategy starts in this process and
remembered for the process's lifetime; until then the registry's prior (``Resources``) is used.
"""

from __future__ import annotations

import functools
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any

#: How many functions' measurements are remembered (least recently used are dropped).
MEMORY_SIZE = 256
#: How many thread probes may vote on whether a function's items hold the GIL.
GIL_PROBE_VOTES = 3


@dataclass(frozen=True)
class Measurement:
    """What is known about one function's items.

    ``per_item_s``: seconds per item in the calling thread; ``spread``: the relative spread of
    the pilot's blocks (0 = steady); ``items``: how many items were timed. ``holds_gil``,
    ``cpu_ratio`` and ``thread_scaling`` come from auto's thread probe (None when it did not run);
    ``item_bytes`` and ``fn_bytes`` are what one item and the function cost to pickle (their
    arrays counted by their buffers, nothing copied; None when not measured);
    ``item_unshared_bytes`` is ``item_bytes`` less the objects every item shares, which a
    strategy that ``shares_objects`` sends once per worker. ``observed`` maps
    a strategy to the seconds per item a real run of it took (wall time / items), which
    overrides the model's estimate for that strategy. ``gil_probes`` counts the thread probes
    behind ``holds_gil`` (a verdict of "holds the GIL" is probed again, up to
    ``GIL_PROBE_VOTES`` times, and the majority decides: a serial decision never runs the items
    on threads, so nothing else would correct a misjudged probe). ``suspect`` is one run that
    was far from its prediction (the strategy and its seconds per item), kept until the next
    run of that strategy confirms or clears it.
    """

    per_item_s: float
    spread: float = 0.0
    items: int = 1
    holds_gil: bool | None = None
    cpu_ratio: float | None = None
    thread_scaling: float | None = None
    item_bytes: int | None = None
    fn_bytes: int | None = None
    item_unshared_bytes: int | None = None
    #: whether the sizes above were measured (None then means "could not be pickled")
    sized: bool = False
    #: thread probes run so far, and how many found the items holding the GIL
    gil_probes: int = 0
    gil_bound_probes: int = 0
    #: thread probes whose threads ran one after another, so that they could not vote
    gil_unread_probes: int = 0
    observed: tuple[tuple[str, float], ...] = field(default=())
    #: a run of a strategy far from its prediction, waiting for a second to confirm it
    suspect: tuple[str, float] | None = None
    #: runs on strategies with no time in ``observed`` (the loop, or another pool) since one was
    #: remembered there
    unobserved_runs: int = 0

    @property
    def gil_verdict_settled(self) -> bool:
        """Whether more thread probes would not change ``holds_gil`` (or none is needed)."""
        return self.holds_gil is not True or self.gil_probes >= GIL_PROBE_VOTES

    def observed_for(self, strategy: str) -> float | None:
        """Seconds per item a run of ``strategy`` measured, if one did."""
        for name, seconds in self.observed:
            if name == strategy:
                return seconds
        return None

    def with_observed(self, strategy: str, per_item_s: float) -> Measurement:
        """A copy that remembers what a run of ``strategy`` measured."""
        kept = tuple((n, s) for n, s in self.observed if n != strategy)
        return replace(self, observed=(*kept, (strategy, per_item_s)))


def function_key(fn: Callable[..., Any], forget: Callable[[Any], None]) -> Hashable | None:
    """A weak key under which ``fn``'s measurement is remembered; None if there can be none.

    A bound method is keyed by its object and function (``WeakMethod``), so the same method of
    the same object is found again; a ``functools.partial`` by its function and the identity
    of its bound arguments (a new partial of the same model each call is the same work); a
    function that takes no weak reference (``np.sum``) by itself, when its module holds it
    under its name (so it lives as long as the module). The key never keeps ``fn`` or what it
    carries alive beyond that; ``forget`` is called with the key when the
    function it stands for is collected.
    """
    try:
        if isinstance(fn, functools.partial):
            inner = function_key(fn.func, forget)
            if inner is None:
                return None
            bound = tuple(id(a) for a in fn.args) + tuple(
                (k, id(v)) for k, v in sorted(fn.keywords.items())
            )
            return ("partial", inner, bound)
        if hasattr(fn, "__self__") and hasattr(fn, "__func__"):
            return weakref.WeakMethod(fn, forget)
        try:
            key = weakref.ref(fn, forget)
        except TypeError:
            # a builtin (``abs``) or a NumPy function (``np.sum``) takes no weak reference;
            # one that its module holds lives as long as the module, so it is keyed itself
            return ("module", fn) if _held_by_module(fn) else None
        hash(key)
    except TypeError:
        return None
    return key


def _held_by_module(fn: Any) -> bool:
    """Whether ``fn`` is what its module holds under its name (so it is never collected)."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "builtins")
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if module is None or not isinstance(name, str) or "." in name:
        return False
    return getattr(module, name, None) is fn and isinstance(fn, Hashable)


class CostMemory:
    """Measurements per function (weakly keyed, bounded) and start-up costs per strategy."""

    def __init__(self, size: int = MEMORY_SIZE) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._functions: OrderedDict[Hashable, Measurement] = OrderedDict()
        self._starts: dict[str, float] = {}
        #: Changes whenever what is remembered changes: a decision taken from the memory at one
        #: generation can be reused, without asking again, while the generation is the same.
        self.generation = 0

    def key(self, fn: Callable[..., Any]) -> Hashable | None:
        """The key ``fn`` is remembered under (see ``function_key``)."""
        return function_key(fn, self._forget)

    def _forget(self, dead: Any) -> None:
        with self._lock:
            stale = [k for k in self._functions if k == dead or _holds(k, dead)]
            for k in stale:
                del self._functions[k]
            self.generation += 1

    def remember_fn(self, fn: Callable[..., Any], measurement: Measurement) -> Hashable | None:
        """Remember ``measurement`` for ``fn``; return its key (None: ``fn`` cannot be keyed).

        For a ``functools.partial`` the entry is also dropped when one of its bound arguments
        (a model, a table) is collected, so its identity cannot be mistaken for a new object's.
        """
        key = self.key(fn)
        if key is None:
            return None
        fresh = self.recall(key) is None
        self.remember(key, measurement)
        if fresh and isinstance(fn, functools.partial):
            for value in (*fn.args, *fn.keywords.values()):
                try:
                    weakref.finalize(value, self._drop, key)
                except TypeError:
                    continue  # ints, strings, tuples: not collectable on their own
        return key

    def _drop(self, key: Hashable) -> None:
        with self._lock:
            self._functions.pop(key, None)
            self.generation += 1

    def recall(self, key: Hashable | None) -> Measurement | None:
        """The measurement remembered under ``key``, if any."""
        if key is None:
            return None
        with self._lock:
            found = self._functions.get(key)
            if found is not None:
                self._functions.move_to_end(key)
            return found

    def remember(self, key: Hashable | None, measurement: Measurement) -> None:
        """Remember ``measurement`` under ``key`` (replacing what was there)."""
        if key is None:
            return
        with self._lock:
            self._functions[key] = measurement
            self._functions.move_to_end(key)
            self.generation += 1
            while len(self._functions) > self._size:
                self._functions.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._functions)

    def start_cost(self, strategy: str) -> float | None:
        """The measured start-up cost of ``strategy``'s pool in this process, if measured."""
        with self._lock:
            return self._starts.get(strategy)

    def record_start(self, strategy: str, seconds: float) -> None:
        """Remember a measured start-up; the smaller of two measurements is kept (less noise)."""
        seconds = max(0.0, float(seconds))
        with self._lock:
            known = self._starts.get(strategy)
            self._starts[strategy] = seconds if known is None else min(known, seconds)
            self.generation += 1

    def clear(self) -> None:
        """Forget everything (tests and benchmarks start from a clean memory)."""
        with self._lock:
            self._functions.clear()
            self._starts.clear()
            self.generation += 1


def _holds(key: Hashable, dead: Any) -> bool:
    return isinstance(key, tuple) and len(key) == 3 and (key[1] == dead or _holds(key[1], dead))


#: The process-wide memory every front door reads and writes.
MEMORY = CostMemory()


__all__ = ["MEMORY", "MEMORY_SIZE", "CostMemory", "Measurement", "function_key"]
