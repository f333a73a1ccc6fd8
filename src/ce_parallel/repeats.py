"""Recognising a repeated map: the question a facade has answered before, asked again.

A library that calls the facade in a loop (a calibrated-explanations explainer per feature, a
conformal predictor per fold) asks the same question many times. ``repeat_key`` says, cheaply,
what the decision depends on; ``repeatable`` says whether a decision may be reused without
asking the gate again. The facade then runs the map as one block of the serial loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from . import costing
from .asking import joblib_says_serial
from .config import ParallelConfig
from .costs import MEMORY
from .decision import ParallelDecision
from .pools import warm_generation
from .serial_loop import SERIAL_BLOCK_TARGET_S
from .telemetry import wanted
from .worker import in_worker


def repeat_key(
    fn: Callable[..., Any],
    arguments: tuple[Any, Any, Any, Any, Any],
    config: ParallelConfig,
    budget: int,
) -> tuple[Any, ...] | None:
    """What a map's decision depends on, when it can be recognised cheaply; else None.

    ``arguments`` are the map's ``(n, n_instances, n_features, bytes_hint, seconds_per_item)``,
    taken by value and type (so that a value once validated is the same value). With them: the
    function's weak key, the asking thread and process (nesting is theirs), the cost memory's
    and the pools' generations, the config's revision, and an active
    ``joblib.parallel_config``.
    """
    _, n_instances, n_features, bytes_hint, seconds_per_item = arguments
    if (
        type(n_features) is not int
        or (n_instances is not None and type(n_instances) is not int)
        or (bytes_hint is not None and type(bytes_hint) is not int)
        or (seconds_per_item is not None and type(seconds_per_item) is not float)
    ):
        return None
    fn_key = MEMORY.key(fn)
    if fn_key is None:
        return None
    return (
        fn_key,
        *arguments,
        threading.get_ident(),
        os.getpid(),
        in_worker(),
        MEMORY.generation,
        warm_generation(),
        config.revision,
        joblib_says_serial(config.strategy, budget),
    )


def repeatable(
    decision: ParallelDecision, cost: costing.Costing | None, n: int, config: ParallelConfig
) -> bool:
    """Whether the same question may reuse ``decision`` and run without asking again: a serial
    decision from a known or assumed cost, for work that fits in the serial loop's one block
    (no cancel or deadline to check between blocks), with nothing to record."""
    return (
        not decision.use_parallel
        and (cost is None or cost.source in ("hint", "remembered"))
        and config.worker_initializer is None
        and decision.per_item_s is not None
        and decision.per_item_s * n <= SERIAL_BLOCK_TARGET_S
        and not wanted(config.telemetry, config.telemetry_path)
    )


__all__ = ["repeat_key", "repeatable"]
