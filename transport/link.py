"""An emulated network link wrapped around any channel: bandwidth, RTT, queueing.

:class:`EmulatedLink` is itself a :class:`~tandem.transport.channel.Channel`. It makes
a loopback deployment behave like an edge box on a constrained uplink:

- Uplink (``send``): messages wait in a FIFO like a NIC's transmit queue. A
  message occupies the link for ``bytes * 8 / bandwidth`` seconds once the one
  before it has finished, at the rate in force when it starts, and reaches the
  wrapped channel ``rtt / 2`` after its last bit left. ``send`` never blocks.
- Downlink (``recv``): a receiver thread pulls from the wrapped channel; each
  message becomes available ``rtt / 2`` later, plus its serialisation time at
  ``downlink_mbps`` (FIFO too) when that is set.

``bytes`` is the encoded size: msgpack header plus tensor frames. Order is
preserved both ways, also across :meth:`EmulatedLink.set_link` changes (a
message never overtakes one sent before it).

Errors: a protocol error from the wrapped channel's ``recv`` is raised by
``recv`` in its turn, after the same delay. A send that the wrapped channel
refuses (its delivery happens later, on the link thread) is logged, and raised
by the next ``send`` as a ``ConnectError`` (or ``ChannelError``) whose cause is
the original. Messages still on the emulated wire when the link closes are
dropped, as a real link would drop them; :meth:`EmulatedLink.flush` waits for
them first. Arrays must not be modified after ``send``: like the ZeroMQ
channel, the link holds them by reference until it delivers them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

from tandem.transport.channel import Channel
from tandem.transport.config import LinkConfig
from tandem.transport.envelope import Envelope, encode
from tandem.transport.errors import ChannelClosed, ChannelError, ChannelTimeout, ConnectError, TransportError

__all__ = ["KEEP", "EmulatedLink", "encoded_size"]

logger = logging.getLogger("tandem.transport.link")

_POLL_S = 0.05  # how often the receiver thread looks up from the wrapped channel's recv
_ERROR_BACKOFF_S = 0.05


class _Keep:
    """Marker for "leave this setting as it is" in :meth:`EmulatedLink.set_link`."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


def encoded_size(envelope: Envelope) -> int:
    """Bytes ``envelope`` takes on the wire: header frame plus tensor frames."""
    return sum(len(frame) for frame in encode(envelope))


def _serialisation_s(nbytes: int, mbps: float | None) -> float:
    return 0.0 if mbps is None else nbytes * 8 / (mbps * 1e6)


def _check_rate(name: str, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise ValueError(f"{name}: expected a positive rate in Mbit/s or None (unlimited), got {value!r}")
    return value


def _check_rtt(value: float) -> float:
    if not value >= 0:
        raise ValueError(f"rtt_ms: expected a non-negative number of milliseconds, got {value!r}")
    return value


@dataclass
class _Outgoing:
    envelope: Envelope
    to: str | None
    nbytes: int
    enqueued_at: float
    deliver_at: float = 0.0


@dataclass
class _Incoming:
    ready_at: float
    envelope: Envelope | None = None
    error: TransportError | None = None


class EmulatedLink(Channel):
    """A channel that delays and rate-limits another one; see the module docstring."""

    def __init__(
        self,
        channel: Channel,
        *,
        bandwidth_mbps: float | None,
        rtt_ms: float,
        downlink_mbps: float | None = None,
    ) -> None:
        self.inner = channel
        self._bandwidth = _check_rate("bandwidth_mbps", bandwidth_mbps)
        self._downlink = _check_rate("downlink_mbps", downlink_mbps)
        self._rtt_s = _check_rtt(rtt_ms) / 1000
        self._lock = threading.Lock()
        self._uplink_changed = threading.Condition(self._lock)
        self._downlink_changed = threading.Condition(self._lock)
        self._waiting: deque[_Outgoing] = deque()  # queued, not yet transmitting
        self._in_flight: deque[_Outgoing] = deque()  # transmitted or transmitting, deliver_at known
        self._delivering = 0
        self._inbox: deque[_Incoming] = deque()
        self._up_free_at = 0.0
        self._up_last_delivery = 0.0
        self._down_free_at = 0.0
        self._down_last_ready = 0.0
        self._deferred_error: TransportError | None = None
        self._inner_closed: ChannelClosed | None = None
        self._closed = False
        self.bytes_up = 0
        self.bytes_down = 0
        self._uplink_thread = threading.Thread(target=self._run_uplink, name="link-uplink", daemon=True)
        self._downlink_thread = threading.Thread(target=self._run_downlink, name="link-downlink", daemon=True)
        self._uplink_thread.start()
        self._downlink_thread.start()
        logger.info("emulated link: %s", self._describe())

    @classmethod
    def from_config(cls, channel: Channel, config: LinkConfig) -> EmulatedLink:
        """Wrap ``channel`` in the link that ``config`` describes."""
        return cls(
            channel, bandwidth_mbps=config.bandwidth_mbps, rtt_ms=config.rtt_ms, downlink_mbps=config.downlink_mbps
        )

    @property
    def bandwidth_mbps(self) -> float | None:
        """Uplink rate in Mbit/s; ``None`` is unlimited."""
        return self._bandwidth

    @property
    def downlink_mbps(self) -> float | None:
        """Downlink rate in Mbit/s; ``None`` is unlimited."""
        return self._downlink

    @property
    def rtt_ms(self) -> float:
        """Round-trip time added, in milliseconds (half each way)."""
        return self._rtt_s * 1000

    def set_link(
        self,
        *,
        bandwidth_mbps: float | _Keep | None = KEEP,
        rtt_ms: float | _Keep = KEEP,
        downlink_mbps: float | _Keep | None = KEEP,
    ) -> None:
        """Change the link while it runs; messages already on the wire keep their timing."""
        with self._lock:
            if not isinstance(bandwidth_mbps, _Keep):
                self._bandwidth = _check_rate("bandwidth_mbps", bandwidth_mbps)
            if not isinstance(downlink_mbps, _Keep):
                self._downlink = _check_rate("downlink_mbps", downlink_mbps)
            if not isinstance(rtt_ms, _Keep):
                self._rtt_s = _check_rtt(rtt_ms) / 1000
            self._uplink_changed.notify_all()
        logger.info("emulated link changed: %s", self._describe())

    def send(self, envelope: Envelope, *, to: str | None = None) -> None:
        """Queue ``envelope`` on the uplink; an earlier failed delivery is raised here instead."""
        nbytes = encoded_size(envelope)  # also surfaces encoding errors in the caller
        snapshot = replace(
            envelope,
            timestamps=dict(envelope.timestamps),
            meta=dict(envelope.meta),
            tensors=list(envelope.tensors),
            frames=list(envelope.frames),
        )
        with self._lock:
            self._check_open()
            if self._deferred_error is not None:
                cause, self._deferred_error = self._deferred_error, None
                kind = ConnectError if isinstance(cause, ConnectError) else ChannelError
                raise kind(f"an earlier message could not be delivered: {cause}") from cause
            self._waiting.append(_Outgoing(snapshot, to, nbytes, time.monotonic()))
            self.bytes_up += nbytes
            self._uplink_changed.notify_all()

    def recv(self, timeout: float | None = None) -> Envelope:
        """The next envelope whose emulated arrival time has come."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._check_open()
                now = time.monotonic()
                if self._inbox and self._inbox[0].ready_at <= now:
                    item = self._inbox.popleft()
                    break
                if not self._inbox and self._inner_closed is not None:
                    raise ChannelClosed(f"the wrapped channel is closed: {self._inner_closed}")
                wait = self._inbox[0].ready_at - now if self._inbox else None
                if deadline is not None:
                    remaining = deadline - now
                    if remaining <= 0:
                        raise ChannelTimeout(f"nothing received in {timeout} s")
                    wait = remaining if wait is None else min(wait, remaining)
                self._downlink_changed.wait(wait)
        if item.error is not None:
            raise item.error
        if item.envelope is None:
            raise ChannelError("link inbox held an empty item")
        return item.envelope

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message sent so far has been handed to the wrapped channel."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._waiting or self._in_flight or self._delivering:
                self._check_open()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ChannelTimeout(f"uplink still busy after {timeout} s")
                self._uplink_changed.wait(remaining)

    def close(self) -> None:
        """Stop both link threads (dropping what is still on the wire) and close the wrapped channel."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._uplink_changed.notify_all()
            self._downlink_changed.notify_all()
        if threading.current_thread() is not self._uplink_thread:
            self._uplink_thread.join()
        self.inner.close()
        if threading.current_thread() is not self._downlink_thread:
            self._downlink_thread.join()

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosed("EmulatedLink is closed")

    def _describe(self) -> str:
        def rate(mbps: float | None) -> str:
            return "unlimited" if mbps is None else f"{mbps:g} Mbit/s"

        return f"uplink {rate(self._bandwidth)}, downlink {rate(self._downlink)}, RTT {self.rtt_ms:g} ms"

    def _run_uplink(self) -> None:
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                self._start_transmissions(now)
                if self._in_flight and self._in_flight[0].deliver_at <= now:
                    item = self._in_flight.popleft()
                    self._delivering += 1
                    self._lock.release()
                    try:
                        self._deliver(item)
                    finally:
                        self._lock.acquire()
                        self._delivering -= 1
                        self._uplink_changed.notify_all()
                    continue
                wake_times = []
                if self._in_flight:
                    wake_times.append(self._in_flight[0].deliver_at)
                if self._waiting:
                    wake_times.append(max(self._waiting[0].enqueued_at, self._up_free_at))
                self._uplink_changed.wait(min(wake_times) - now if wake_times else None)

    def _start_transmissions(self, now: float) -> None:
        """Put on the wire each waiting message whose turn has come (called with the lock held)."""
        while self._waiting:
            item = self._waiting[0]
            start = max(item.enqueued_at, self._up_free_at)
            if start > now:
                return
            self._up_free_at = start + _serialisation_s(item.nbytes, self._bandwidth)
            item.deliver_at = max(self._up_free_at + self._rtt_s / 2, self._up_last_delivery)
            self._up_last_delivery = item.deliver_at
            self._in_flight.append(self._waiting.popleft())

    def _deliver(self, item: _Outgoing) -> None:
        try:
            self.inner.send(item.envelope, to=item.to)
        except Exception as exc:  # the caller's send returned long ago: keep it for the next one
            logger.warning("emulated link could not deliver %s to %r: %s", item.envelope.request_id, item.to, exc)
            error = exc if isinstance(exc, TransportError) else ChannelError(f"delivery failed: {exc!r}")
            if error is not exc:
                error.__cause__ = exc
            with self._lock:
                self._deferred_error = error

    def _run_downlink(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                envelope = self.inner.recv(timeout=_POLL_S)
            except ChannelTimeout:
                continue
            except ChannelClosed as exc:
                with self._lock:
                    self._inner_closed = exc
                    self._downlink_changed.notify_all()
                return
            except TransportError as exc:  # a bad message (ProtocolError) or a failing channel
                self._arrive(_Incoming(0.0, error=exc), 0)
                if isinstance(exc, ChannelError):
                    time.sleep(_ERROR_BACKOFF_S)  # do not spin on a broken channel
                continue
            self._arrive(_Incoming(0.0, envelope=envelope), encoded_size(envelope))

    def _arrive(self, item: _Incoming, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            finish = max(now, self._down_free_at) + _serialisation_s(nbytes, self._downlink)
            self._down_free_at = finish
            item.ready_at = max(finish + self._rtt_s / 2, self._down_last_ready)
            self._down_last_ready = item.ready_at
            self.bytes_down += nbytes
            self._inbox.append(item)
            self._downlink_changed.notify_all()
