"""A cache that registers a fork-safety hook at import, as a library module would."""

from __future__ import annotations

import os

from ce_parallel import register_fork_hook


class Cache:
    def __init__(self) -> None:
        self.data = {"filled_in": os.getpid()}
        self.resets = 0

    def forksafe_reset(self) -> None:
        self.data.clear()
        self.resets += 1


CACHE = Cache()
register_fork_hook(CACHE)


def cache_state(_: int) -> tuple[int, int]:
    """(this worker's pid, how often its cache was reset)."""
    return os.getpid(), CACHE.resets
