"""A readers-writer gate: requests run side by side, a plan swap waits for them and holds new ones back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PlanGate"]


class PlanGate:
    """Many ``serving()`` sections at once, or one ``swapping()`` section alone.

    A waiting swap stops new requests from entering, so it is never starved;
    it happens between requests: none sees half of the old plan and half of
    the new one.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._serving = 0
        self._swapping = False
        self._waiting_swaps = 0

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Hold the current plan for the length of one request."""
        with self._changed:
            while self._swapping or self._waiting_swaps:
                self._changed.wait()
            self._serving += 1
        try:
            yield
        finally:
            with self._changed:
                self._serving -= 1
                if self._serving == 0:
                    self._changed.notify_all()

    @contextmanager
    def swapping(self) -> Iterator[None]:
        """Wait for the requests in progress, then change the plan alone."""
        with self._changed:
            self._waiting_swaps += 1
            while self._swapping or self._serving:
                self._changed.wait()
            self._waiting_swaps -= 1
            self._swapping = True
        try:
            yield
        finally:
            with self._changed:
                self._swapping = False
                self._changed.notify_all()
