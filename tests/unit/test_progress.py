"""progress=True shows something on every install: a tqdm bar on a terminal, else plain lines."""

from __future__ import annotations

import io
import sys

import pytest

from ce_parallel import ParallelConfig, create_executor
from ce_parallel.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_progress_is_a_plain_line_at_the_end() -> None:
    stream = io.StringIO()
    bar = Progress(100, "ce-parallel threads", stream=stream)
    for _ in range(10):
        bar.update(10)
    bar.close()
    assert bar.plain
    # throttled: ten quick updates give the one closing line, not ten
    assert stream.getvalue() == "ce-parallel threads: 100/100 items\n"


def test_plain_lines_are_throttled_not_dropped() -> None:
    stream = io.StringIO()
    bar = Progress(4, "job", stream=stream)
    bar.PLAIN_EVERY_S = 0.0  # every update is due
    for _ in range(4):
        bar.update(1)
    bar.close()
    assert stream.getvalue().splitlines() == [f"job: {i}/4 items" for i in range(1, 5)]


def test_without_tqdm_progress_is_a_plain_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails as if not installed
    stream = Terminal()
    bar = Progress(3, "job", stream=stream)
    bar.update(3)
    bar.close()
    assert bar.plain and stream.getvalue() == "job: 3/3 items\n"


def test_on_a_terminal_progress_is_a_tqdm_bar_and_no_plain_line() -> None:
    pytest.importorskip("tqdm")
    stream = Terminal()
    bar = Progress(5, "job", stream=stream)
    bar.update(5)
    bar.close()
    assert not bar.plain
    assert "job: 5/5 items\n" not in stream.getvalue()


def test_a_map_with_progress_writes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with create_executor(ParallelConfig(enabled=True, strategy="threads")) as executor:
        assert executor.map(abs, range(-20, 0), progress=True) == list(range(20, 0, -1))
    captured = capsys.readouterr()
    assert "ce-parallel threads: 20/20 items" in captured.err
    assert captured.out == ""
