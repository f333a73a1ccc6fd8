"""The strategy registry: one module per strategy, one line per strategy here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..executor import ParallelExecutor

#: strategy name -> "module:class" (imported on first use, so unused backends never load)
REGISTRY: dict[str, str] = {
    "sequential": "ce_parallel.strategies.serial:SerialExecutor",
    "threads": "ce_parallel.strategies.threads:ThreadExecutor",
    "processes": "ce_parallel.strategies.processes:ProcessExecutor",
    "joblib": "ce_parallel.strategies.joblib:JoblibExecutor",
    "dask": "ce_parallel.strategies.dask:DaskExecutor",
    "auto": "ce_parallel.strategies.auto:AutoExecutor",
}


def strategy_class(name: str) -> type[ParallelExecutor]:
    """The executor class registered under ``name``."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigurationError(
            f"strategy={name!r} is not accepted; expected one of {', '.join(REGISTRY)}"
        ) from None
    module, _, attr = target.partition(":")
    cls: type[ParallelExecutor] = getattr(importlib.import_module(module), attr)
    return cls


__all__ = ["REGISTRY", "strategy_class"]
