"""A warning that repeats while a condition lasts (a full disk, say), logged at most once an interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["ThrottledWarning"]


class ThrottledWarning:
    """Log the first occurrence at once, then at most one line per ``interval_s`` with the count since the last."""

    def __init__(
        self, logger: logging.Logger, *, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._since_last = 0
        self._last: float | None = None

    def warn(self, message: str) -> bool:
        """Count one occurrence of ``message``; log it if due. Whether a line was logged."""
        with self._lock:
            self._since_last += 1
            now = self.clock()
            if self._last is not None and now - self._last < self.interval_s:
                return False
            if self._last is not None:
                times = "time" if self._since_last == 1 else "times"
                message += f" ({self._since_last} {times} in the last {now - self._last:.0f} s)"
            self._since_last = 0
            self._last = now
        self.logger.warning("%s", message)
        return True
