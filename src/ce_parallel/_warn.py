"""Warnings attributed to the caller's code, not to the ce-parallel line that raised them."""

from __future__ import annotations

import sys
import warnings

_PACKAGE = __name__.partition(".")[0]


def _inside_package(module: object) -> bool:
    return isinstance(module, str) and (module == _PACKAGE or module.startswith(_PACKAGE + "."))


def warn_at_caller(message: str | Warning, category: type[Warning] = UserWarning) -> None:
    """Warn as if from the first frame outside ce-parallel: the user's own line.

    A user can then filter the warning by their module (``-W`` / ``filterwarnings(module=...)``)
    and sees their call in the message, however deep inside the package it was raised.
    """
    frame = sys._getframe(1)
    level = 2  # for warnings.warn, 1 is this function and 2 the frame that called it
    while frame.f_back is not None and _inside_package(frame.f_globals.get("__name__")):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


__all__ = ["warn_at_caller"]
