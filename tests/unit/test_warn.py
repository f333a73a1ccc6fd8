"""Warnings raised deep inside the package point at the user's line."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

from ce_parallel._warn import warn_at_caller


class Deep(UserWarning):
    pass


def _library_function(depth: int) -> Callable[[], None]:
    """A function ``depth`` calls deep whose frames all belong to a ce_parallel module."""
    namespace: dict[str, object] = {
        "__name__": "ce_parallel.fake",
        "warn_at_caller": warn_at_caller,
        "Deep": Deep,
    }
    source = "def level0():\n    warn_at_caller('deep inside', Deep)\n"
    for i in range(1, depth + 1):
        source += f"def level{i}():\n    level{i - 1}()\n"
    exec(compile(source, "/site-packages/ce_parallel/fake.py", "exec"), namespace)
    return namespace[f"level{depth}"]  # type: ignore[return-value]


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_the_warning_names_the_first_line_outside_the_package(depth: int) -> None:
    call = _library_function(depth)
    with pytest.warns(Deep, match="deep inside") as record:
        line = _line_of_next_call()
        call()
    assert record[0].filename == __file__
    assert record[0].lineno == line


def test_a_direct_call_names_its_caller() -> None:
    with pytest.warns(Deep) as record:
        line = _line_of_next_call()
        warn_at_caller("here", Deep)
    assert (record[0].filename, record[0].lineno) == (__file__, line)


def test_the_user_can_filter_it_by_their_own_module() -> None:
    call = _library_function(2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=Deep, module=__name__)
        call()
    assert record == []


def _line_of_next_call() -> int:
    import sys

    return sys._getframe(1).f_lineno + 1
