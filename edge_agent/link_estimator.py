"""Live estimates of the uplink: RTT from small round trips, bandwidth from big ones."""

from __future__ import annotations

import threading

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


class LinkEstimator:
    """Exponentially weighted estimates, fed by the agent after every exchange.

    ``observe_rtt`` takes the round trip of a message too small for bandwidth to
    matter (a heartbeat). ``observe_transfer`` takes a round trip that carried
    ``nbytes`` up, minus the time the hub says it spent: what remains beyond the
    RTT is serialisation on the uplink.
    """

    def __init__(self, *, alpha: float = 0.3, min_transfer_ms: float = 0.5) -> None:
        self.alpha = alpha
        self.min_transfer_ms = min_transfer_ms
        self._rtt_ms: float | None = None
        self._bandwidth_mbps: float | None = None
        self._lock = threading.Lock()

    def observe_rtt(self, rtt_ms: float) -> None:
        """A small message's round trip, in ms."""
        with self._lock:
            self._rtt_ms = self._blend(self._rtt_ms, rtt_ms)

    def observe_transfer(self, nbytes: int, round_trip_ms: float, hub_ms: float) -> None:
        """A round trip that sent ``nbytes`` up and spent ``hub_ms`` in the hub."""
        with self._lock:
            rtt = self._rtt_ms or 0.0
            transfer_ms = round_trip_ms - hub_ms - rtt
            if transfer_ms < self.min_transfer_ms or nbytes <= 0:
                return  # too fast to tell the link apart from noise
            self._bandwidth_mbps = self._blend(self._bandwidth_mbps, nbytes * 8 / (transfer_ms * 1000))

    def snapshot(self) -> LinkEstimate:
        """The current estimate."""
        with self._lock:
            return LinkEstimate(self._rtt_ms, self._bandwidth_mbps)

    def _blend(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.alpha) * old + self.alpha * new
