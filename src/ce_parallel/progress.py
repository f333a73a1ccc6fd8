"""Progress of a long map: a tqdm bar when tqdm is installed, else a periodic log line."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("ce_parallel.progress")


class Progress:
    """Counts completed items; a tqdm bar when tqdm is installed, else a periodic log line."""

    LOG_EVERY_S = 5.0

    def __init__(self, total: int, label: str) -> None:
        self.total, self.done, self.label = total, 0, label
        self._last = time.monotonic()
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._bar = None
        else:
            had_monitor = getattr(tqdm, "monitor", None) is not None
            self._bar = tqdm(total=total, desc=label, leave=False)
            self._owns_monitor = not had_monitor

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif time.monotonic() - self._last >= self.LOG_EVERY_S or self.done == self.total:
            self._last = time.monotonic()
            logger.info("%s: %d/%d items", self.label, self.done, self.total)

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
