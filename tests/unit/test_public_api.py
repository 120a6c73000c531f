"""The public API is explicit: adding or removing a name is a visible decision."""

from tandem import transport

EXPECTED = {
    "PROTOCOL_VERSION", "Channel", "ChannelClosed", "ChannelError", "ChannelTimeout", "CodecSpec", "ConnectError",
    "Envelope", "Kind", "Limits", "MalformedHeader", "MessageTooLarge", "ProtocolError", "TensorSpec",
    "TensorSpecError", "TransportError", "TruncatedMessage", "UnknownCodec", "UnknownKind", "VersionMismatch",
    "decode", "decode_tensor", "encode", "encode_tensor", "open_client", "open_server", "pack", "unpack",
}  # fmt: skip


def test_transport_all_is_what_we_document() -> None:
    assert set(transport.__all__) == EXPECTED
    assert all(hasattr(transport, name) for name in transport.__all__)


def test_every_transport_error_derives_from_transport_error() -> None:
    errors = [getattr(transport, n) for n in EXPECTED if n.endswith(("Error", "Closed", "Timeout", "Mismatch"))]
    errors += [transport.MessageTooLarge, transport.TruncatedMessage, transport.UnknownCodec, transport.UnknownKind]
    assert all(issubclass(e, transport.TransportError) for e in errors)
    assert issubclass(transport.ConnectError, transport.ChannelError)
    assert issubclass(transport.VersionMismatch, transport.ProtocolError)
