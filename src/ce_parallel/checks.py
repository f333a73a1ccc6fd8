"""The small checks every setting goes through, written once.

Each check raises ``ConfigurationError`` with the same shape of message: the setting as the user
spelled it, the value given, and what is accepted. ``ON_WORDS`` and ``OFF_WORDS`` are the one
vocabulary for switches, wherever a switch is read (``CE_PARALLEL``, ``CE_PARALLEL_FULL``, the
calibrated-explanations tokens).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigurationError

#: Words that switch something on, and off; case and surrounding spaces are ignored.
ON_WORDS: frozenset[str] = frozenset({"on", "1", "true", "yes", "enable"})
OFF_WORDS: frozenset[str] = frozenset({"off", "0", "false", "no", "disable"})
SWITCH_WORDS_TEXT = f"{'/'.join(sorted(ON_WORDS))} or {'/'.join(sorted(OFF_WORDS))}"


def rejected(setting: str, value: Any, accepted: str) -> ConfigurationError:
    """The error for ``setting=value``, saying what ``accepted`` values are."""
    return ConfigurationError(f"{setting}={value!r} is not accepted; expected {accepted}")


def check_int(setting: str, value: Any, minimum: int = 1, *, optional: bool = True) -> None:
    """``value`` is an integer >= ``minimum`` (or None when ``optional``); bools are not ints."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise rejected(setting, value, f"an integer >= {minimum}{' or None' if optional else ''}")


def check_seconds(setting: str, value: Any, *, optional: bool = True) -> None:
    """``value`` is a finite number of seconds > 0 (or None when ``optional``)."""
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or not math.isfinite(value)
    ):
        raise rejected(
            setting, value, f"a finite number of seconds > 0{' or None' if optional else ''}"
        )


def check_bool(setting: str, value: Any) -> None:
    """``value`` is ``True`` or ``False`` (not a truthy string or number)."""
    if not isinstance(value, bool):
        raise rejected(setting, value, "True or False")


def check_callable(setting: str, value: Any, *, optional: bool = True) -> None:
    """``value`` can be called (or is None when ``optional``)."""
    if value is None and optional:
        return
    if not callable(value):
        raise rejected(setting, value, "a callable" + (" or None" if optional else ""))


def switch_word(word: str) -> bool | None:
    """True for an ``ON_WORDS`` word, False for an ``OFF_WORDS`` word, None for anything else."""
    token = word.strip().lower()
    if token in ON_WORDS:
        return True
    if token in OFF_WORDS:
        return False
    return None


def parse_switch(setting: str, raw: str) -> bool:
    """Read a switch (``CE_PARALLEL_FULL=1``, ``force_serial=off``); anything else is an error."""
    value = switch_word(raw)
    if value is None:
        raise rejected(setting, raw, SWITCH_WORDS_TEXT)
    return value


__all__ = [
    "OFF_WORDS",
    "ON_WORDS",
    "SWITCH_WORDS_TEXT",
    "check_bool",
    "check_callable",
    "check_int",
    "check_seconds",
    "parse_switch",
    "rejected",
    "switch_word",
]
