"""Logs that input cannot blow up: values from the wire clipped, repeated lines throttled.

:func:`clip` bounds a value a sender chose (a plan id, a header field) before
it goes into a log line or an error message. :class:`ThrottledWarning` logs a
condition that repeats (a full disk, say) at most once an interval with a
count; :class:`ThrottledLog` does the same per kind (one throttle per
rejection code, say), for a bounded number of kinds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["CLIP_CHARS", "ThrottledLog", "ThrottledWarning", "clip"]

CLIP_CHARS = 80
_MAX_KINDS = 256


def clip(value: object, limit: int = CLIP_CHARS, *, quoted: bool = True) -> str:
    """``repr(value)`` (``str`` with ``quoted=False``), cut to ``limit`` characters with the full length said.

    ``clip("x" * 5000)`` is ``'xxxx…' (5000 chars)``: a log line or a message
    stays short whatever a sender put in the field.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = repr(bytes(value[: limit + 1]))
    else:
        text = repr(value) if quoted else str(value)
    if len(text) <= limit:
        return text
    size = len(value) if isinstance(value, (str, bytes, bytearray, memoryview)) else len(text)
    unit = "bytes" if isinstance(value, (bytes, bytearray, memoryview)) else "chars"
    return f"{text[:limit]}… ({size} {unit})"


class ThrottledWarning:
    """Log the first occurrence at once, then at most one line per ``interval_s`` with the count since the last."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self.level = level
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
        self.logger.log(self.level, "%s", message)
        return True


class ThrottledLog:
    """One :class:`ThrottledWarning` per kind (e.g. per rejection code), for at most 256 kinds.

    Kinds past that share one throttle, so a sender inventing kinds cannot
    grow the table or the log.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 10.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make = lambda: ThrottledWarning(logger, interval_s=interval_s, clock=clock, level=level)
        self._kinds: dict[str, ThrottledWarning] = {}
        self._overflow = self._make()
        self._lock = threading.Lock()

    def log(self, kind: str, message: str) -> bool:
        """Count one ``message`` of ``kind``; log it if that kind's interval has passed. Whether a line was logged."""
        throttle = self._kinds.get(kind)
        if throttle is None:
            with self._lock:
                if len(self._kinds) < _MAX_KINDS:
                    throttle = self._kinds.setdefault(kind, self._make())
                else:
                    throttle = self._overflow
        return throttle.warn(message)
