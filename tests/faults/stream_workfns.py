"""Functions for the streaming fault tests: importable by reference in every worker."""

from __future__ import annotations

import os
from typing import Any


def name_of(x: Any) -> Any:
    return "lock" if hasattr(x, "acquire") else x


def die_in_worker(item: tuple[int, int, int]) -> int:
    """Kill the worker process running ``item`` if it is the bad one; in the caller, return."""
    index, bad, caller = item
    if index == bad and os.getpid() != caller:
        os._exit(3)
    return index
