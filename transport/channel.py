"""The one interface every transport implements.

A channel moves :class:`~tandem.transport.envelope.Envelope` objects. A *client*
channel (the edge agent's) talks to one server; a *server* channel (the cloud
hub's) hears many clients and answers each with ``send(reply, to=request.sender)``.

Contract, for every implementation:

- ``send`` may be called from any thread and does not wait for the peer.
- ``recv`` blocks up to ``timeout`` seconds (``None``: forever) and raises
  :class:`~tandem.transport.errors.ChannelTimeout` when nothing arrived. A message
  that fails validation raises a :class:`~tandem.transport.errors.ProtocolError`
  whose ``sender`` says who to answer; the channel stays usable.
- A received envelope's ``sender`` names its peer (a device id).
- ``close`` is idempotent; any call after it raises ``ChannelClosed``.

A channel that runs a network thread of its own (MQTT: paho's) can also
*push*: :meth:`Channel.deliver_to` has that thread hand each message to a
handler instead of queueing it for ``recv`` in another thread, which saves a
thread hand-off per message. :func:`tandem.transport.serve.receive_forever` uses it
where a channel offers it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import TypeAlias, TypeVar

from tandem.transport.envelope import Envelope
from tandem.transport.errors import TransportError

__all__ = ["Channel", "PushHandler"]

PushHandler: TypeAlias = Callable[[Envelope | TransportError], None]
"""Takes what ``recv`` would have returned (an envelope) or raised (a ``ProtocolError``, or ``ChannelClosed`` once)."""

_C = TypeVar("_C", bound="Channel")


class Channel(ABC):
    """Send envelopes, receive them with a timeout, close."""

    @abstractmethod
    def send(self, envelope: Envelope, *, to: str | None = None) -> None:
        """Queue ``envelope`` for the peer; ``to`` picks the peer on a server channel."""

    @abstractmethod
    def recv(self, timeout: float | None = None) -> Envelope:
        """The next envelope, with ``sender`` set; ``ChannelTimeout`` after ``timeout`` s."""

    def deliver_to(self, handler: PushHandler | None) -> bool:
        """Push each received message to ``handler`` on the channel's own network thread; False if it has none.

        ``handler`` gets, in order, what ``recv`` would have returned or raised,
        starting with anything already queued, and ``ChannelClosed`` once when
        the channel closes. It must not block: the channel's network I/O waits
        while it runs. ``recv`` gets nothing while a handler is set; ``None``
        goes back to queueing for ``recv``. Channels without a network thread
        of their own (ZeroMQ, in-process) return False and their callers loop
        on ``recv``.
        """
        return False

    @abstractmethod
    def close(self) -> None:
        """Release sockets and threads; idempotent."""

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
