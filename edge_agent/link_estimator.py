"""Live estimates of the link: RTT, uplink and downlink rate, and how sure the uplink figure is.

docs/link-estimation.md says what is assumed and why. In short:

- **RTT**: the minimum round trip of small messages over a window, as BBR
  keeps it; when the window holds fewer than three samples, the last three
  samples however old, so one heartbeat that waited in a stalled queue cannot
  become the whole estimate.
- **Uplink rate from probe trains**: the agent sends two probes back to back.
  The first empties a token bucket's burst; the second then leaves at the
  bucket's rate, so the gap between their answers is its serialisation time
  (the packet-pair dispersion: RTT, burst and hub time cancel out). The
  estimate is the median of the last three train samples in the window; a
  train that disagrees with it asks for another at once, and two that agree
  with each other and with none before them replace the older ones.
- **Uplink rate from activations**, until a train has been measured: transfer
  time is affine in bytes, ``t = t0 + bytes / rate`` (``t0`` absorbs a burst
  and TCP start-up), fitted with the Theil-Sen slope over the samples at least
  a quarter the size of the window's largest; the median per-message rate when
  all sizes are alike.
- **Drops are seen at once**: three activations in a row more than
  ``change_ratio`` slower than the estimate predicts drop the train samples
  (the activations speak until the next train, which :meth:`LinkEstimator.wants_probe`
  asks for); a request without an answer after ``waited_ms`` bounds the rate
  from above (``bytes / (waited - RTT)``) until a later transfer completes.
- **Burst**: per activation, the bytes that left faster than the rate
  (``bytes - transfer time x rate``, at least 0); the median over the window
  is the burst a message of that traffic can expect (0 until measured).
- **Downlink rate**: the part of an activation's round trip that the uplink
  estimate and the hub's own time do not explain, for replies of 16 kB or
  more; None until such samples exist.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SINGLE_SAMPLE_SPREAD", "LinkEstimate", "LinkEstimator", "theil_sen"]

_RECENT_RTT = 3  # RTT samples always considered, however old
_CHANGE_RUN = 3  # activations in a row, much slower than predicted, that mean the link dropped
_MIN_REPLY_SAMPLE = 16_000  # replies smaller than this say nothing about the downlink
_TRAIN_SAMPLES = 3  # probe trains the uplink rate is the median of
SINGLE_SAMPLE_SPREAD = 0.1
"""The relative error assumed of an estimate resting on one sample (one train, one pair of sizes)."""


@dataclass(frozen=True)
class LinkEstimate:
    """A snapshot: RTT in ms and uplink (and downlink) rate in Mbit/s; None until measured.

    ``spread`` is the relative standard error of the uplink rate (0 when unknown);
    the selector's switching margin grows with it. ``assumed``: the figures are
    the config's assumptions, not measurements.
    """

    rtt_ms: float | None
    bandwidth_mbps: float | None
    downlink_mbps: float | None = None
    spread: float = 0.0
    assumed: bool = False
    burst_bytes: int = 0
    """Bytes of a message that leave before the rate applies (a token bucket's burst), as activations showed."""

    def __repr__(self) -> str:
        bw = "?" if self.bandwidth_mbps is None else f"{self.bandwidth_mbps:.2f}"
        rtt = "?" if self.rtt_ms is None else f"{self.rtt_ms:.1f}"
        down = "?" if self.downlink_mbps is None else f"{self.downlink_mbps:.2f}"
        return f"LinkEstimate(rtt_ms={rtt}, bandwidth_mbps={bw}, downlink_mbps={down}, spread={self.spread:.3f})"


@dataclass(frozen=True)
class _Transfer:
    at: float
    nbytes: int
    ms: float

    @property
    def mbps(self) -> float:
        return self.nbytes * 8 / (self.ms * 1000)


def theil_sen(points: list[tuple[float, float]], *, min_ratio: float = 1.3) -> tuple[float, float, float] | None:
    """(slope, intercept, relative MAD of the slopes) of ``points`` (x, y), or None.

    Only pairs whose x differ by ``min_ratio`` or more vote; no such pair, or a
    slope that is not positive, gives None. A single pair's spread is taken as
    :data:`SINGLE_SAMPLE_SPREAD`.
    """
    slopes = [
        (y2 - y1) / (x2 - x1)
        for i, (x1, y1) in enumerate(points)
        for x2, y2 in points[i + 1 :]
        if max(x1, x2) >= min_ratio * min(x1, x2)
    ]
    if not slopes:
        return None
    slope = statistics.median(slopes)
    if slope <= 0:
        return None
    intercept = statistics.median(y - slope * x for x, y in points)
    mad = statistics.median(abs(s - slope) for s in slopes) / slope if len(slopes) >= 2 else SINGLE_SAMPLE_SPREAD
    return slope, intercept, mad


class LinkEstimator:
    """RTT, uplink and downlink estimates, fed by the agent after every exchange (see module docstring).

    ``observe_rtt`` takes the round trip of a message too small for the rate to
    matter (a heartbeat). ``observe_transfer`` takes a round trip that carried
    ``nbytes`` up (and ``reply_bytes`` down) and spent ``hub_ms`` in the hub.
    """

    def __init__(
        self,
        *,
        rtt_window_s: float = 10.0,
        bandwidth_window_s: float = 10.0,
        max_samples: int = 24,
        min_transfer_ms: float = 0.5,
        change_ratio: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rtt_window_s = rtt_window_s
        self.bandwidth_window_s = bandwidth_window_s
        self.min_transfer_ms = min_transfer_ms
        self.change_ratio = change_ratio
        self._clock = clock
        self._rtt: deque[tuple[float, float]] = deque(maxlen=256)
        self._up: deque[_Transfer] = deque(maxlen=max_samples)
        self._down: deque[_Transfer] = deque(maxlen=max_samples)
        self._free: deque[tuple[float, float]] = deque(maxlen=max_samples)  # (time, bytes beyond the rate)
        self._trains: deque[_Transfer] = deque(maxlen=_TRAIN_SAMPLES)  # dispersion of back-to-back probes
        self._bound: _Transfer | None = None  # newest timeout: the rate is at most its mbps
        self._slower = 0  # activations in a row slower than the estimate by more than change_ratio
        self._faster = 0  # ... and faster than it (beyond the burst): the link may have grown
        self._train_due = False  # activations asked for a train before the periodic one
        self._lock = threading.Lock()
        self._fitted: tuple[tuple[tuple[int, float], ...], tuple[float, float, float] | None] | None = None

    # -- observations ---------------------------------------------------------------------------------------------

    def observe_rtt(self, rtt_ms: float) -> None:
        """A small message's round trip, in ms."""
        with self._lock:
            self._rtt.append((self._clock(), rtt_ms))

    def observe_transfer(self, nbytes: int, round_trip_ms: float, hub_ms: float, *, reply_bytes: int = 0) -> None:
        """A round trip that sent ``nbytes`` up, ``reply_bytes`` down and spent ``hub_ms`` in the hub."""
        with self._lock:
            beyond_rtt = round_trip_ms - hub_ms - (self._rtt_ms() or 0.0)
            self._observe_downlink(nbytes, beyond_rtt, reply_bytes)
            up_ms = beyond_rtt - self._downlink_ms(reply_bytes)
            self._observe_burst(nbytes, up_ms)
            if up_ms < self.min_transfer_ms or nbytes <= 0:
                return  # too fast to tell the link apart from noise
            self._add_up(_Transfer(self._clock(), nbytes, up_ms))
            self._bound = None

    def observe_train(self, nbytes: int, dispersion_ms: float) -> None:
        """Two probes went back to back; the second (``nbytes``) was answered ``dispersion_ms`` after the first."""
        with self._lock:
            if dispersion_ms >= self.min_transfer_ms and nbytes > 0:
                self._trains.append(_Transfer(self._clock(), nbytes, dispersion_ms))
                self._bound = None
                self._train_due = False
                self._forget_older_trains()

    def observe_down_train(self, nbytes: int, dispersion_ms: float) -> None:
        """The hub answered two probes back to back with ``nbytes`` each; the second came ``dispersion_ms`` after
        the first: its time on the downlink.

        A gap under ``min_transfer_ms`` is the host's noise, but it still says the downlink is at least that
        fast: it counts as ``min_transfer_ms`` (32 kB: at least 524 Mbit/s), a lower bound, where the uplink's
        rate would otherwise stand in for a downlink far faster than it.
        """
        with self._lock:
            if nbytes > 0 and dispersion_ms >= 0:
                self._down.append(_Transfer(self._clock(), nbytes, max(dispersion_ms, self.min_transfer_ms)))

    def wants_down_probe(self) -> bool:
        """Whether the downlink has no recent sample (answers under 16 kB give none): time for a probe pair."""
        with self._lock:
            return not self._recent(self._down)

    def observe_timeout(self, nbytes: int, waited_ms: float) -> None:
        """``nbytes`` went up and no answer came within ``waited_ms``: the uplink is at most that fast."""
        with self._lock:
            up_ms = waited_ms - (self._rtt_ms() or 0.0)
            if up_ms >= self.min_transfer_ms and nbytes > 0:
                bound = _Transfer(self._clock(), nbytes, up_ms)
                if self._bound is None or bound.mbps < self._bound.mbps:
                    self._bound = bound

    def forget_timeouts(self) -> None:
        """Drop the timeout bound: the hub itself is down, so the silence says nothing about the link."""
        with self._lock:
            self._bound = None

    # -- estimates ------------------------------------------------------------------------------------------------

    def snapshot(self) -> LinkEstimate:
        """The current estimate."""
        with self._lock:
            rate, spread = self._uplink()
            if rate is not None and self._bound is not None:
                rate = min(rate, self._bound.mbps)
            elif self._bound is not None:
                rate = self._bound.mbps
            down = self._recent(self._down)
            down_rate = statistics.median(t.mbps for t in down) if down else None
            horizon = self._clock() - self.bandwidth_window_s
            free = [b for at, b in self._free if at >= horizon]
            burst = int(statistics.median(free)) if free else 0
            return LinkEstimate(self._rtt_ms(), rate, down_rate, spread, burst_bytes=burst)

    def wants_probe(self, max_age_s: float) -> bool:
        """Whether a train is due: none in the last ``max_age_s`` seconds, or the newest one awaits confirmation."""
        with self._lock:
            if self._train_due or not self._trains or self._trains[-1].at < self._clock() - max_age_s:
                return True
            return not self._agrees(self._trains[-1].mbps, _median_rate(self._recent(self._trains))[0])

    def probe_rate(self) -> float | None:
        """The rate to size a probe train by: the lowest of the estimate and the last three activations' rates.

        Right after a drop the trains still say the old rate; a train sized for
        it would flood the new, slower link's queue for seconds.
        """
        with self._lock:
            rate, _ = self._uplink()
            recent = [t.mbps for t in list(self._up)[-_CHANGE_RUN:] if t.at >= self._clock() - self.bandwidth_window_s]
            bound = [self._bound.mbps] if self._bound is not None else []
            candidates = ([rate] if rate is not None else []) + recent + bound
            return min(candidates) if candidates else None

    def measured_mbps(self) -> float | None:
        """The uplink rate trains and activations measured, without the bound of a timeout.

        What the link carried while it carried anything: the rate to expect
        answers by when it may have gone silent.
        """
        with self._lock:
            return self._uplink()[0]

    def predicted_up_ms(self, nbytes: int) -> float | None:
        """The uplink time the current fit predicts for ``nbytes`` (None without a rate)."""
        with self._lock:
            return self._up_ms(nbytes)

    # -- internals (called with the lock held) --------------------------------------------------------------------

    def _rtt_ms(self) -> float | None:
        horizon = self._clock() - self.rtt_window_s
        recent = [v for t, v in self._rtt if t >= horizon]
        if len(recent) < _RECENT_RTT:
            recent += [v for _, v in list(self._rtt)[-_RECENT_RTT:]]
        return min(recent) if recent else None

    def _recent(self, samples: deque[_Transfer]) -> list[_Transfer]:
        horizon = self._clock() - self.bandwidth_window_s
        return [t for t in samples if t.at >= horizon]

    def _voters(self) -> list[_Transfer]:
        """The window's samples at least a quarter the size of its largest: beyond a bucket's burst."""
        samples = self._recent(self._up)
        largest = max((t.nbytes for t in samples), default=0)
        return [t for t in samples if 4 * t.nbytes >= largest]

    def _fit(self) -> tuple[float, float, float] | None:
        """The Theil-Sen fit of the voters, computed again only when they change (a fit is a Python loop over
        every pair: about 70 us for 24 samples, and the agent asks two or three times per request)."""
        points = tuple((t.nbytes, t.ms) for t in self._voters())
        if self._fitted is None or self._fitted[0] != points:
            self._fitted = (points, theil_sen(list(points)))
        return self._fitted[1]

    def _uplink(self) -> tuple[float | None, float]:
        """(rate in Mbit/s, relative standard error): from the trains, else from the activations."""
        trains = self._recent(self._trains)
        if trains:
            return _median_rate(trains)
        samples = self._recent(self._up)
        if not samples:
            return None, 0.0
        fit = self._fit()
        if fit is not None:
            slope, _, mad = fit
            return 8 / (slope * 1000), 1.4826 * mad / math.sqrt(len(samples))
        return _median_rate(samples)

    def _up_ms(self, nbytes: int) -> float | None:
        fit = None if self._recent(self._trains) else self._fit()
        if fit is not None:
            slope, intercept, _ = fit
            return max(0.0, intercept + slope * nbytes)
        rate, _ = self._uplink()
        return None if rate is None else nbytes * 8 / (rate * 1000)

    def _downlink_ms(self, reply_bytes: int) -> float:
        """Time the reply took down: by the downlink estimate, else as fast as the uplink, else nothing."""
        if reply_bytes <= 0:
            return 0.0
        down = self._recent(self._down)
        rate = statistics.median(t.mbps for t in down) if down else self._uplink()[0]
        return reply_bytes * 8 / (rate * 1000) if rate else 0.0

    def _agrees(self, a: float, b: float) -> bool:
        return abs(a / b - 1) <= self.change_ratio

    def _forget_older_trains(self) -> None:
        """When the two newest trains agree with each other and with none before them, the link changed."""
        trains = list(self._trains)
        if len(trains) < 3 or not self._agrees(trains[-1].mbps, trains[-2].mbps):
            return
        level = (trains[-1].mbps + trains[-2].mbps) / 2
        if not any(self._agrees(t.mbps, level) for t in trains[:-2]):
            self._trains.clear()
            self._trains.extend(trains[-2:])

    def _observe_burst(self, nbytes: int, up_ms: float) -> None:
        """The bytes of this activation that left faster than the train-measured rate."""
        trains = self._recent(self._trains)
        if trains and nbytes > 0:
            rate_bytes_per_ms = _median_rate(trains)[0] * 1000 / 8
            self._free.append((self._clock(), max(0.0, nbytes - max(up_ms, 0.0) * rate_bytes_per_ms)))

    def _observe_downlink(self, nbytes: int, beyond_rtt_ms: float, reply_bytes: int) -> None:
        """The part of the round trip the uplink fit does not explain, when it is the larger part."""
        up_ms = self._up_ms(nbytes)
        if up_ms is None or reply_bytes < _MIN_REPLY_SAMPLE:
            return  # a small reply's time is the host's noise, not the downlink's rate
        down_ms = beyond_rtt_ms - up_ms
        if down_ms >= max(self.min_transfer_ms, up_ms):
            self._down.append(_Transfer(self._clock(), reply_bytes, down_ms))

    def _add_up(self, sample: _Transfer) -> None:
        """Add an activation's sample; three in a row much slower than predicted mean the link dropped.

        Three in a row much faster than predicted beyond the burst ask for a
        train now rather than at its period: the link may have grown.
        """
        predicted = self._up_ms(sample.nbytes)
        self._up.append(sample)
        if predicted is None or predicted < 2.0:
            return  # too short a transfer to tell a drop from noise
        horizon = self._clock() - self.bandwidth_window_s
        free = [b for at, b in self._free if at >= horizon]
        beyond_burst = predicted * max(0.0, sample.nbytes - (statistics.median(free) if free else 0)) / sample.nbytes
        self._faster = self._faster + 1 if sample.ms < (1 - self.change_ratio) * beyond_burst else 0
        if self._faster >= _CHANGE_RUN:
            self._train_due, self._faster = True, 0
        self._slower = self._slower + 1 if sample.ms > (1 + self.change_ratio) * predicted else 0
        if self._slower >= _CHANGE_RUN:
            kept = list(self._up)[-_CHANGE_RUN:]
            self._up.clear()
            self._up.extend(kept)
            self._trains.clear()
            self._slower = 0


def _median_rate(samples: list[_Transfer]) -> tuple[float, float]:
    """(median rate in Mbit/s, its relative standard error from the MAD) of ``samples``."""
    rates = [t.mbps for t in samples]
    rate = statistics.median(rates)
    if len(rates) == 1:
        return rate, SINGLE_SAMPLE_SPREAD
    mad = statistics.median(abs(r - rate) for r in rates) / rate
    return rate, 1.4826 * mad / math.sqrt(len(rates))
