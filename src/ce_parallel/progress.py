"""Progress of a long map: a tqdm bar on a terminal, else a plain line on stderr now and then."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts completed items and shows them.

    A tqdm bar where tqdm draws one (a terminal, a notebook). Where it would draw nothing (tqdm
    is missing, or stderr is a log file or a pipe), a plain ``label: done/total items`` line on
    ``stream`` (default ``sys.stderr``) at most every ``PLAIN_EVERY_S`` and once at the end.
    """

    #: Seconds between two plain lines: a log gets a line every few seconds, not one per chunk.
    PLAIN_EVERY_S = 5.0

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.done, self.label = total, 0, label
        self._stream = stream if stream is not None else sys.stderr
        self._last = time.monotonic()
        self._bar = None
        self._owns_monitor = False
        #: Whether progress is shown as plain lines rather than a bar.
        self.plain = True
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        had_monitor = getattr(tqdm, "monitor", None) is not None
        # disable=None: tqdm turns itself off where stderr is no terminal (then we print lines)
        self._bar = tqdm(total=total, desc=label, leave=False, file=self._stream, disable=None)
        self._owns_monitor = not had_monitor
        self.plain = bool(getattr(self._bar, "disable", False))

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        if not self.plain:
            return
        now = time.monotonic()
        if now - self._last >= self.PLAIN_EVERY_S or self.done >= self.total:
            self._last = now
            print(f"{self.label}: {self.done}/{self.total} items", file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is None:
            return
        bar_class = type(self._bar)
        self._bar.close()
        # tqdm starts a monitor thread with the first bar and never stops it; stop the one our
        # bar started once no bar is left, so a map leaves no thread behind
        monitor = getattr(bar_class, "monitor", None)
        if self._owns_monitor and monitor is not None and not bar_class._instances:
            monitor.exit()
            bar_class.monitor = None


__all__ = ["Progress"]
