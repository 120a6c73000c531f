"""The one interface every transport implements.

A channel moves :class:`~transport.envelope.Envelope` objects. A *client*
channel (the edge agent's) talks to one server; a *server* channel (the cloud
hub's) hears many clients and answers each with ``send(reply, to=request.sender)``.

Contract, for every implementation:

- ``send`` may be called from any thread and does not wait for the peer.
- ``recv`` blocks up to ``timeout`` seconds (``None``: forever) and raises
  :class:`~transport.errors.ChannelTimeout` when nothing arrived. A message
  that fails validation raises a :class:`~transport.errors.ProtocolError`
  whose ``sender`` says who to answer; the channel stays usable.
- A received envelope's ``sender`` names its peer (a device id).
- ``close`` is idempotent; any call after it raises ``ChannelClosed``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import TypeVar

from transport.envelope import Envelope

__all__ = ["Channel"]

_C = TypeVar("_C", bound="Channel")


class Channel(ABC):
    """Send envelopes, receive them with a timeout, close."""

    @abstractmethod
    def send(self, envelope: Envelope, *, to: str | None = None) -> None:
        """Queue ``envelope`` for the peer; ``to`` picks the peer on a server channel."""

    @abstractmethod
    def recv(self, timeout: float | None = None) -> Envelope:
        """The next envelope, with ``sender`` set; ``ChannelTimeout`` after ``timeout`` s."""

    @abstractmethod
    def close(self) -> None:
        """Release sockets and threads; idempotent."""

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
