"""How NumPy arrays are pickled between the caller and process workers.

Protocol 5 rebuilds every array through ``numpy._core.numeric._frombuffer``, a Python-level
call per array; the older ``ndarray.__reduce__`` rebuilds it in C. A result holding thousands of
small arrays (a calibrated-explanations explanation holds about 150) unpickles several times
faster the old way, while a large array is cheaper with protocol 5 (its buffer is copied once,
not twice). ``reduce_array`` picks by size: below ``heuristics.SMALL_ARRAY_PICKLE_BYTES`` the
old way. The pickle stream stays protocol 5 either way; any unpickler reads it.
"""

from __future__ import annotations

import copyreg
import pickle
import sys
from typing import Any

from . import heuristics


def reduce_array(array: Any) -> Any:
    """The reduction of ``array`` that unpickles fastest for its size."""
    if array.nbytes < heuristics.SMALL_ARRAY_PICKLE_BYTES:
        return array.__reduce__()
    return array.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


def use_fast_arrays(pickler: pickle.Pickler) -> None:
    """Make ``pickler`` (a standard ``pickle.Pickler``) pickle arrays with ``reduce_array``.

    Nothing changes while numpy is not imported: no array can be met then.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return
    table = getattr(pickler, "dispatch_table", None) or copyreg.dispatch_table
    pickler.dispatch_table = {**table, numpy.ndarray: reduce_array}


__all__ = ["reduce_array", "use_fast_arrays"]
