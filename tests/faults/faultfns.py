"""Module-level functions for the reliability tests: importable by reference in every worker."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from workfns import _append

_state = threading.local()


def next_on_empty_at(item: tuple[str, int, int]) -> int:
    """Log the run, then, at item ``bad``, the common bug: ``next()`` on an empty iterator."""
    path, index, bad = item
    _append(path, f"{index}\n")
    if index == bad:
        next(iter(()))
    return index * 10


def init_fails_first(path: str) -> None:
    """A worker initializer that fails the first time anywhere (a file says so), then works."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        _state.initialized = True
        return
    os.close(fd)
    raise RuntimeError("the initializer failed once")


def init_always_fails() -> None:
    raise RuntimeError("the initializer always fails")


def was_initialized(_: int) -> bool:
    return bool(getattr(_state, "initialized", False))


class TwoArgError(Exception):
    """Pickles, but cannot be rebuilt: ``__init__`` needs two arguments, ``args`` holds one."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"bad pair {a}-{b}")


class LockedError(Exception):
    """Cannot be pickled at all: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_two_arg_at_3(x: int) -> int:
    if x == 3:
        raise TwoArgError(x, x + 1)
    return x


def raise_locked_at_3(x: int) -> int:
    if x == 3:
        raise LockedError("held a lock at 3")
    return x


class Unrebuildable:
    """Pickles fine, but unpickling calls ``Unrebuildable()`` without its argument."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        return (Unrebuildable, ())


def unrebuildable_at_3(x: int) -> Any:
    return Unrebuildable(x) if x == 3 else x


def value_of(result: Any) -> Any:
    return result.value if isinstance(result, Unrebuildable) else result


def nap(x: int, seconds: float = 0.2) -> int:
    time.sleep(seconds)
    return x


def nap_long(x: int) -> int:
    time.sleep(0.25)
    return x
