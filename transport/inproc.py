"""In-process channels: a server and the clients connected to it, in one process.

Messages still go through :func:`~tandem.transport.envelope.encode` and
:func:`~tandem.transport.envelope.decode`, so everything a socket would reject is
rejected here too. Used by unit tests and by single-process deployments.
"""

from __future__ import annotations

import queue
import threading

from tandem.transport.channel import Channel
from tandem.transport.envelope import Buffer, Envelope, Limits, decode, encode
from tandem.transport.errors import ChannelClosed, ChannelTimeout, ConnectError, ProtocolError

__all__ = ["InProcClient", "InProcServer"]

_Inbox = queue.Queue[tuple[str, list[Buffer]]]


class _Endpoint(Channel):
    """Shared receive side: an inbox of (sender, frames)."""

    def __init__(self, limits: Limits) -> None:
        self._inbox: _Inbox = queue.Queue()
        self._limits = limits
        self._closed = threading.Event()

    def recv(self, timeout: float | None = None) -> Envelope:
        self._check_open()
        try:
            sender, frames = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise ChannelTimeout(f"nothing received in {timeout} s") from None
        try:
            envelope = decode(frames, self._limits)
        except ProtocolError as exc:
            exc.sender = sender
            raise
        envelope.sender = sender
        return envelope

    def close(self) -> None:
        self._closed.set()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise ChannelClosed(f"{type(self).__name__} is closed")


class InProcServer(_Endpoint):
    """The server end; clients attach with :meth:`connect`."""

    def __init__(self, *, limits: Limits = Limits()) -> None:
        super().__init__(limits)
        self._clients: dict[str, InProcClient] = {}
        self._lock = threading.Lock()

    def connect(self, device_id: str) -> InProcClient:
        """A client channel for ``device_id`` whose messages arrive here."""
        client = InProcClient(self, device_id, self._limits)
        with self._lock:
            self._clients[device_id] = client
        return client

    def send(self, envelope: Envelope, *, to: str | None = None) -> None:
        self._check_open()
        with self._lock:
            client = self._clients.get(to or "")
        if client is None or client._closed.is_set():
            raise ConnectError(f"no connected client {to!r}")
        client._inbox.put(("server", encode(envelope)))

    def _deliver(self, sender: str, frames: list[Buffer]) -> None:
        self._check_open()
        self._inbox.put((sender, frames))


class InProcClient(_Endpoint):
    """A client end created by :meth:`InProcServer.connect`."""

    def __init__(self, server: InProcServer, device_id: str, limits: Limits) -> None:
        super().__init__(limits)
        self._server = server
        self.device_id = device_id

    def send(self, envelope: Envelope, *, to: str | None = None) -> None:
        self._check_open()
        try:
            self._server._deliver(self.device_id, encode(envelope))
        except ChannelClosed as exc:
            raise ConnectError("the in-process server is closed") from exc
