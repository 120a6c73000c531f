"""The receive loop every long-running component runs on a channel."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tandem.transport.channel import Channel
from tandem.transport.envelope import Envelope
from tandem.transport.errors import ChannelClosed, ChannelError, ChannelTimeout, ProtocolError, TransportError

__all__ = ["receive_forever"]

_AFTER_UNEXPECTED_S = 0.05


def receive_forever(
    channel: Channel,
    stop: threading.Event,
    *,
    on_message: Callable[[Envelope], None],
    on_rejected: Callable[[ProtocolError], None],
    on_failure: Callable[[Envelope, Exception], None] | None = None,
    logger: logging.Logger,
    poll_s: float = 0.2,
) -> None:
    """Hand each envelope to ``on_message`` until ``stop`` is set or the channel closes.

    A message that fails validation goes to ``on_rejected`` (its ``sender`` says
    whom to answer). A handler that raises is logged and reported to
    ``on_failure``; it never ends the loop, so one bad message cannot stop a
    server.

    Where the channel can push (:meth:`Channel.deliver_to`), the handlers run on
    its network thread and this thread only waits for ``stop``; they must
    therefore not block. Otherwise this thread loops on ``recv``.
    """

    def handle(envelope: Envelope) -> None:
        try:
            on_message(envelope)
        except Exception as exc:  # one bad message must never end the receive loop
            logger.exception("failed on a %s message from %s", envelope.kind.value, envelope.sender)
            if on_failure is not None:
                on_failure(envelope, exc)

    closed = threading.Event()

    def pushed(item: Envelope | TransportError) -> None:
        if isinstance(item, Envelope):
            handle(item)
        elif isinstance(item, ProtocolError):
            on_rejected(item)
        elif isinstance(item, ChannelClosed):
            closed.set()
        else:
            logger.warning("receive failed: %s", item)

    if channel.deliver_to(pushed):
        try:
            while not closed.is_set() and not stop.wait(poll_s):
                pass
        finally:
            channel.deliver_to(None)
        return

    while not stop.is_set():
        try:
            envelope = channel.recv(timeout=poll_s)
        except ChannelTimeout:
            continue
        except ProtocolError as exc:
            on_rejected(exc)
            continue
        except ChannelClosed:
            return
        except ChannelError as exc:
            logger.warning("receive failed: %s", exc)
            continue
        except Exception:  # a bug in receiving must not leave a live server deaf
            logger.exception("receive failed unexpectedly; receiving goes on")
            stop.wait(_AFTER_UNEXPECTED_S)  # a failure that repeats must not spin
            continue
        handle(envelope)
