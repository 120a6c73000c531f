"""Live estimates of the uplink, robust to queueing.

Queueing only ever makes a transfer look slower and a round trip look longer,
so, as BBR does, the agent keeps the **minimum** RTT seen over a window and the
**maximum** delivery rate seen over a shorter one. A drop in capacity shows as
soon as the faster samples age out of the bandwidth window.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["LinkEstimate", "LinkEstimator"]


class LinkEstimate:
    """A snapshot: RTT in ms and uplink bandwidth in Mbit/s (None until measured)."""

    def __init__(self, rtt_ms: float | None, bandwidth_mbps: float | None) -> None:
        self.rtt_ms = rtt_ms
        self.bandwidth_mbps = bandwidth_mbps

    def __repr__(self) -> str:
        bw = "?" if self.bandwidth_mbps is None else f"{self.bandwidth_mbps:.2f}"
        rtt = "?" if self.rtt_ms is None else f"{self.rtt_ms:.1f}"
        return f"LinkEstimate(rtt_ms={rtt}, bandwidth_mbps={bw})"


class _Window:
    """The best sample (lowest or highest) of the last ``seconds``; the newest survives however old it is.

    A monotonic deque: a sample that a newer, at least as good one outshines can
    never be the best again and is dropped when that one arrives, so ``add`` and
    ``best`` cost O(1) amortised however many requests a window holds.
    """

    def __init__(self, seconds: float, clock: Callable[[], float], *, highest: bool) -> None:
        self.seconds = seconds
        self.clock = clock
        self.highest = highest
        self.samples: deque[tuple[float, float]] = deque()  # best first, newest last

    def add(self, value: float) -> None:
        samples = self.samples
        while samples and (samples[-1][1] <= value if self.highest else samples[-1][1] >= value):
            samples.pop()
        samples.append((self.clock(), value))

    def best(self) -> float | None:
        samples = self.samples
        horizon = self.clock() - self.seconds
        while len(samples) > 1 and samples[0][0] < horizon:
            samples.popleft()
        return samples[0][1] if samples else None


class LinkEstimator:
    """Windowed min-RTT and max-bandwidth estimates, fed by the agent after every exchange.

    ``observe_rtt`` takes the round trip of a message too small for bandwidth to
    matter (a heartbeat). ``observe_transfer`` takes a round trip that carried
    ``nbytes`` up, minus the time the hub says it spent: what remains beyond the
    RTT is serialisation on the uplink.
    """

    def __init__(
        self,
        *,
        rtt_window_s: float = 10.0,
        bandwidth_window_s: float = 3.0,
        min_transfer_ms: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_transfer_ms = min_transfer_ms
        self._rtt = _Window(rtt_window_s, clock, highest=False)
        self._bandwidth = _Window(bandwidth_window_s, clock, highest=True)
        self._lock = threading.Lock()

    def observe_rtt(self, rtt_ms: float) -> None:
        """A small message's round trip, in ms."""
        with self._lock:
            self._rtt.add(rtt_ms)

    def observe_transfer(self, nbytes: int, round_trip_ms: float, hub_ms: float) -> None:
        """A round trip that sent ``nbytes`` up and spent ``hub_ms`` in the hub."""
        with self._lock:
            transfer_ms = round_trip_ms - hub_ms - (self._rtt.best() or 0.0)
            if transfer_ms < self.min_transfer_ms or nbytes <= 0:
                return  # too fast to tell the link apart from noise
            self._bandwidth.add(nbytes * 8 / (transfer_ms * 1000))

    def snapshot(self) -> LinkEstimate:
        """The current estimate."""
        with self._lock:
            return LinkEstimate(self._rtt.best(), self._bandwidth.best())
