"""One module per strategy; which strategies exist is the registry's to say (``..registry``)."""

from __future__ import annotations

from ..registry import strategy_class, strategy_records

__all__ = ["strategy_class", "strategy_records"]
