"""``ParallelMetrics``: plain counters accumulated across ``map`` calls."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class ParallelMetrics:
    """Counters and timings of one executor, accumulated across calls until ``reset()``.

    ``worker_utilisation_pct`` is busy time (the sum of the time workers spent inside chunks)
    divided by ``max_workers`` x wall time of the parallel maps, in percent.
    """

    tasks_submitted: int = 0
    tasks_completed: int = 0
    chunks: int = 0
    maps: int = 0
    failures: int = 0
    fallbacks: int = 0
    timeouts: int = 0
    cancellations: int = 0
    total_duration: float = 0.0
    busy_time: float = 0.0
    max_workers: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def worker_utilisation_pct(self) -> float:
        """Busy time / (workers x wall time), in percent; 0 before any parallel work."""
        capacity = self.max_workers * self.total_duration
        return 0.0 if capacity <= 0 else min(100.0, 100.0 * self.busy_time / capacity)

    def add(self, **increments: float) -> None:
        """Add ``increments`` to the named counters, atomically."""
        counters = self.__dict__  # a dict's own lookups: every map adds here, the serial one too
        with self._lock:
            for name, value in increments.items():
                counters[name] += value

    def add_serial_map(self, items: int, seconds: float) -> None:
        """Count one serial map of ``items`` that completed in ``seconds`` (as ``add`` would,
        without building its arguments: a repeated tiny map counts here on every call)."""
        with self._lock:
            self.tasks_submitted += items
            self.tasks_completed += items
            self.maps += 1
            self.total_duration += seconds
            self.busy_time += seconds

    def snapshot(self) -> dict[str, Any]:
        """A plain dict of every counter and ``worker_utilisation_pct``."""
        with self._lock:
            data = {
                f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")
            }
            data["worker_utilisation_pct"] = round(self.worker_utilisation_pct, 2)
        return data

    def reset(self) -> None:
        """Zero every counter (``max_workers`` is kept: it describes the executor)."""
        with self._lock:
            for f in fields(self):
                if not f.name.startswith("_") and f.name != "max_workers":
                    setattr(self, f.name, f.default)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


__all__ = ["ParallelMetrics"]
