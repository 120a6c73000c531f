"""Tandem's transport exceptions.

Every failure that crosses the transport boundary becomes one of these,
raised ``from`` the library error that caused it (pyzmq, paho-mqtt, lz4,
zstandard, msgpack)::

    TransportError
    ├── ProtocolError            a message that cannot be trusted
    │   ├── VersionMismatch      header "v" is not ours
    │   ├── UnknownKind          header "kind" is not a known message kind
    │   ├── MalformedHeader      header missing, not msgpack, or a field of the wrong type
    │   ├── TensorSpecError      dtype / shape / length / quantisation disagree
    │   ├── UnknownCodec         "codec" or "compression" names nothing we know
    │   ├── MessageTooLarge      over the configured size limit
    │   └── TruncatedMessage     fewer bytes or frames than the header promises
    └── ChannelError             the link itself
        ├── ChannelClosed        used after close()
        ├── ChannelTimeout       nothing arrived in time
        └── ConnectError         could not reach or bind the peer / broker

Protocol errors carry ``field`` (the header field at fault) and whatever of
``request_id``, ``device_id``, ``plan_id``, ``plan_version`` and ``split_id``
the header gave (read before the check that failed, or salvaged from a header
that failed it), so that a server can answer the sender with a named error the
sender can match to its request instead of dropping it.
"""

from __future__ import annotations

from tandem.errors import TandemError

__all__ = [
    "ChannelClosed",
    "ChannelError",
    "ChannelTimeout",
    "ConnectError",
    "MalformedHeader",
    "MessageTooLarge",
    "ProtocolError",
    "TensorSpecError",
    "TransportError",
    "TruncatedMessage",
    "UnknownCodec",
    "UnknownKind",
    "VersionMismatch",
]


class TransportError(TandemError):
    """Root of every error raised by ``transport``."""


class ProtocolError(TransportError):
    """A received message broke the wire protocol; ``field`` names where."""

    code = "protocol_error"

    def __init__(
        self,
        message: str,
        *,
        field: str,
        request_id: str | None = None,
        device_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.request_id = request_id
        self.device_id = device_id
        self.plan_id: str | None = None
        self.plan_version: int | None = None
        self.split_id: str | None = None
        self.sender: str | None = None

    def keeping_ids(self, envelope: object) -> ProtocolError:
        """This error, with the ids of ``envelope`` (an Envelope) it lacks; returns ``self`` for ``raise``."""
        self.request_id = self.request_id or getattr(envelope, "request_id", "") or None
        self.device_id = self.device_id or getattr(envelope, "device_id", "") or None
        self.plan_id = self.plan_id or getattr(envelope, "plan_id", "") or None
        self.plan_version = self.plan_version or getattr(envelope, "plan_version", 0) or None
        self.split_id = self.split_id or getattr(envelope, "split_id", "") or None
        return self


class VersionMismatch(ProtocolError):
    """The header's protocol version is not the one this build speaks."""

    code = "version_mismatch"


class UnknownKind(ProtocolError):
    """The header's message kind is not one we know."""

    code = "unknown_kind"


class MalformedHeader(ProtocolError):
    """The header is missing, not msgpack, or has a field of the wrong type."""

    code = "malformed_header"


class TensorSpecError(ProtocolError):
    """A tensor's dtype, shape, byte length or quantisation do not agree."""

    code = "tensor_spec"


class UnknownCodec(ProtocolError):
    """A tensor names a codec or a compression we do not implement."""

    code = "unknown_codec"


class MessageTooLarge(ProtocolError):
    """A message (or what it would decompress to) is over the size limit."""

    code = "message_too_large"


class TruncatedMessage(ProtocolError):
    """The frames hold fewer (or more) bytes than the header promises."""

    code = "truncated"


class ChannelError(TransportError):
    """The channel itself failed: closed, timed out, or unreachable."""


class ChannelClosed(ChannelError):
    """The channel was used after ``close()``."""


class ChannelTimeout(ChannelError):
    """``recv`` waited its whole timeout and nothing arrived."""


class ConnectError(ChannelError):
    """The peer or broker could not be reached, or the address not bound."""
