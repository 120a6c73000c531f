"""What crosses the wire: envelope, tensor codecs, channels.

The public API is this module's ``__all__``; tests/unit/test_public_api.py
fails if it drifts.
"""

from tandem.transport.channel import Channel
from tandem.transport.codec import CodecSpec, TensorSpec, decode_tensor, encode_tensor
from tandem.transport.envelope import PROTOCOL_VERSION, Envelope, Kind, Limits, decode, encode, pack, unpack
from tandem.transport.errors import (
    ChannelClosed,
    ChannelError,
    ChannelTimeout,
    ConnectError,
    MalformedHeader,
    MessageTooLarge,
    ProtocolError,
    TensorSpecError,
    TransportError,
    TruncatedMessage,
    UnknownCodec,
    UnknownKind,
    VersionMismatch,
)
from tandem.transport.factory import open_client, open_server

__all__ = [
    "PROTOCOL_VERSION",
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "ChannelTimeout",
    "CodecSpec",
    "ConnectError",
    "Envelope",
    "Kind",
    "Limits",
    "MalformedHeader",
    "MessageTooLarge",
    "ProtocolError",
    "TensorSpec",
    "TensorSpecError",
    "TransportError",
    "TruncatedMessage",
    "UnknownCodec",
    "UnknownKind",
    "VersionMismatch",
    "decode",
    "decode_tensor",
    "encode",
    "encode_tensor",
    "open_client",
    "open_server",
    "pack",
    "unpack",
]
