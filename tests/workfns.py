"""Module-level functions for tests: importable by reference in every kind of worker."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from ce_parallel import ParallelConfig


def square(x: int) -> int:
    return x * x


def add_one(x: int) -> int:
    return x + 1


def sleep_then_return(item: tuple[int, float]) -> int:
    index, seconds = item
    time.sleep(seconds)
    return index


def item_size(blob: bytes) -> tuple[int, int]:
    return len(blob), blob[0]


def boom_at(item: tuple[int, int]) -> int:
    index, bad = item
    if index == bad:
        raise KeyError(f"item {index} is bad")
    return index


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def log_item(item: tuple[str, int, int]) -> int:
    path, index, bad = item
    _append(path, f"{index}\n")
    if index == bad:
        raise ValueError(f"item {index} failed")
    return index


def log_then_sleep(item: tuple[str, int, float]) -> int:
    """Log that the item started, then sleep: a test counts started items instead of timing."""
    path, index, seconds = item
    _append(path, f"{index}\n")
    time.sleep(seconds)
    return index


def rng_draw(x: int, rng: Any) -> float:
    return float(x + rng.random())


_marker = threading.local()
_process_marker: dict[str, str] = {}


def mark_initialized(path: str) -> None:
    worker_id = f"{os.getpid()}-{threading.get_ident()}"
    _marker.value = worker_id
    _append(path, worker_id + "\n")


def initialized_marker(_: int) -> str | None:
    return getattr(_marker, "value", None)


def make_config(strategy: str, **changes: Any) -> ParallelConfig:
    """An enabled config for ``strategy`` with the full matrix and two workers."""
    return ParallelConfig(
        enabled=True, strategy=strategy, full_matrix=True, max_workers=2, **changes
    )
