"""Envelope: encode/decode and pack/unpack round trips, and every named rejection."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

import tandem.transport.envelope as envelope_module
from tandem.transport.codec import CodecSpec
from tandem.transport.envelope import (
    PACKED_MAGIC,
    PROTOCOL_VERSION,
    Envelope,
    Kind,
    Limits,
    decode,
    encode,
    pack,
    rejection_reply,
    unpack,
)
from tandem.transport.errors import (
    MalformedHeader,
    MessageTooLarge,
    ProtocolError,
    TensorSpecError,
    TruncatedMessage,
    UnknownCodec,
    UnknownKind,
    VersionMismatch,
)


def activation() -> Envelope:
    rng = np.random.default_rng(1)
    return Envelope.with_arrays(
        Kind.ACTIVATION,
        {
            "feat": rng.normal(size=(1, 8, 4, 4)).astype(np.float32),
            "skip": rng.normal(size=(1, 4, 4, 4)).astype(np.float32),
            "attention_mask": np.ones((1, 6), np.int64),
        },
        CodecSpec.parse("int8@1+lz4"),
        device_id="cam-01",
        plan_id="resnet50",
        plan_version=3,
        split_id="s2",
        deadline=1_800_000_000.5,
        timestamps={"edge_sent": 1.5},
        meta={"fps": 30},
    )


def header_of(envelope: Envelope) -> dict[str, Any]:
    return msgpack.unpackb(encode(envelope)[0])


def with_header(envelope: Envelope, **changes: Any) -> list[Any]:
    header = header_of(envelope)
    header.update(changes)
    return [msgpack.packb(header), *envelope.frames]


def test_frames_round_trip_keeps_every_field() -> None:
    sent = activation()
    got = decode(encode(sent))
    for name in ("kind", "request_id", "device_id", "plan_id", "plan_version", "split_id", "deadline", "meta"):
        assert getattr(got, name) == getattr(sent, name)
    assert got.timestamps == {"edge_sent": 1.5}
    assert [t.name for t in got.tensors] == ["feat", "skip", "attention_mask"]
    np.testing.assert_array_equal(got.arrays()["attention_mask"], np.ones((1, 6), np.int64))
    np.testing.assert_allclose(got.arrays()["feat"], sent.arrays()["feat"])


def test_pack_round_trip_and_magic() -> None:
    sent = activation()
    payload = pack(sent)
    assert payload[:4] == PACKED_MAGIC
    got = unpack(payload)
    assert got.request_id == sent.request_id
    np.testing.assert_allclose(got.arrays()["skip"], sent.arrays()["skip"])


def test_reply_keeps_ids_and_error_reply_names_the_problem() -> None:
    request = decode(encode(activation()))
    request.sender = "peer-1"
    error = request.error_reply("tensor_spec", "bad shape", field_name="tensors['feat'].shape")
    assert (error.kind, error.request_id, error.device_id, error.split_id) == (
        Kind.ERROR,
        request.request_id,
        "cam-01",
        "s2",
    )
    assert error.sender is None and error.tensors == []
    assert decode(encode(error)).meta == {
        "code": "tensor_spec",
        "field": "tensors['feat'].shape",
        "message": "bad shape",
    }


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"v": 2}, VersionMismatch, r"v: protocol version 2 is not supported; this build speaks 1"),
        ({"kind": "telepathy"}, UnknownKind, r"kind: unknown message kind 'telepathy'"),
        ({"id": 7}, MalformedHeader, r"id: expected a string, got 7"),
        ({"plan_version": "3"}, MalformedHeader, r"plan_version: expected an integer"),
        ({"deadline": "soon"}, MalformedHeader, r"deadline: expected a finite number or nil"),
        ({"ts": {"a": "b"}}, MalformedHeader, r"ts: expected a map of names to finite numbers"),
        # Strict where the spec says int or finite float (a bool is not 1, NaN never expires).
        ({"v": True}, VersionMismatch, r"v: protocol version True is not supported"),
        ({"v": 1.0}, VersionMismatch, r"v: protocol version 1.0 is not supported"),
        ({"deadline": float("nan")}, MalformedHeader, r"deadline: expected a finite number or nil, got nan"),
        ({"deadline": float("inf")}, MalformedHeader, r"deadline: expected a finite number or nil, got inf"),
        ({"ts": {"edge_sent": float("nan")}}, MalformedHeader, r"ts: expected a map of names to finite numbers"),
        ({"id": ""}, MalformedHeader, r"id: expected a non-empty string, got ''"),
        ({"plan_version": True}, MalformedHeader, r"plan_version: expected an integer, got True"),
        ({"meta": [1]}, MalformedHeader, r"meta: expected a map"),
        ({"tensors": {}}, MalformedHeader, r"tensors: expected a list"),
    ],
)
def test_bad_header_fields_are_named(changes: dict[str, Any], error: type[ProtocolError], message: str) -> None:
    with pytest.raises(error, match=message) as info:
        decode(with_header(activation(), **changes))
    assert info.value.field == message.split(":")[0].replace("\\", "")


def test_protocol_errors_carry_the_request_and_device_ids() -> None:
    sent = activation()
    with pytest.raises(UnknownKind) as info:
        decode(with_header(sent, kind="nope"))
    assert (info.value.request_id, info.value.device_id) == (sent.request_id, "cam-01")


@pytest.mark.parametrize(
    ("changes", "limits", "error"),
    [
        ({"v": 2}, Limits(), VersionMismatch),
        ({"v": None}, Limits(), VersionMismatch),
        ({"kind": "nope"}, Limits(), UnknownKind),
        ({"deadline": float("nan")}, Limits(), MalformedHeader),
        ({"meta": {"pad": "x" * 5000}}, Limits(max_header_bytes=4000), MalformedHeader),
        ({}, Limits(max_message_bytes=300), MessageTooLarge),
    ],
    ids=["v2", "no-v", "kind", "nan-deadline", "header-too-large", "message-too-large"],
)
def test_rejections_keep_every_id_the_header_gave(
    changes: dict[str, Any], limits: Limits, error: type[ProtocolError]
) -> None:
    """docs/protocol.md 1.3: the error keeps id, device, plan, plan_version and split, over ZeroMQ and packed."""
    sent = activation()
    frames = with_header(sent, **changes)
    packed = pack_header_only(frames[0]) + b"".join(bytes(f) for f in frames[1:])
    for attempt in (lambda: decode(frames, limits), lambda: unpack(packed, limits)):
        with pytest.raises(error) as info:
            attempt()
        exc = info.value
        assert (exc.request_id, exc.device_id, exc.plan_id, exc.plan_version, exc.split_id) == (
            sent.request_id, sent.device_id, sent.plan_id, sent.plan_version, sent.split_id
        )  # fmt: skip
        reply = decode(encode(rejection_reply(exc)))
        assert reply.kind is Kind.ERROR and reply.meta["code"] == error.code
        assert (reply.request_id, reply.device_id, reply.plan_id, reply.plan_version, reply.split_id) == (
            sent.request_id, sent.device_id, sent.plan_id, sent.plan_version, sent.split_id
        )  # fmt: skip


def test_a_rejection_without_a_readable_id_gets_a_fresh_one_and_says_so() -> None:
    with pytest.raises(MalformedHeader) as info:
        decode([b"\xc1not msgpack"])
    reply = rejection_reply(info.value)
    assert reply.request_id and reply.meta["request_id_unread"] is True
    assert decode(encode(reply)).meta["code"] == "malformed_header"


def test_a_wrong_device_is_not_echoed_as_the_reply_address() -> None:
    exc = MalformedHeader("device: header says 'cam-02'", field="device", request_id="r1", device_id="cam-02")
    assert rejection_reply(exc).device_id == ""
    assert rejection_reply(exc, device_id="cam-01").device_id == "cam-01"


def tensor_header(envelope: Envelope, index: int, **changes: Any) -> list[Any]:
    header = header_of(envelope)
    header["tensors"][index].update(changes)
    return [msgpack.packb(header), *envelope.frames]


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"dtype": "complex128"}, TensorSpecError, r"tensors\['feat'\]\.dtype: unsupported dtype"),
        ({"shape": [1, 8, 4, 5]}, TensorSpecError, r"tensors\['feat'\]\.raw_nbytes: 128 does not match int8"),
        ({"shape": "big"}, MalformedHeader, r"tensors\['feat'\]\.shape: expected a list of integers"),
        ({"codec": "fp4"}, UnknownCodec, r"tensors\['feat'\]\.codec: unknown codec 'fp4'"),
        ({"compression": "brotli"}, UnknownCodec, r"unknown compression 'brotli'"),
        ({"nbytes": -1}, MalformedHeader, r"tensors\['feat'\]\.nbytes: expected a non-negative integer"),
        ({"scale": ["x"]}, MalformedHeader, r"tensors\['feat'\]\.scale: expected a list of numbers"),
        ({"axis": 9}, TensorSpecError, r"tensors\['feat'\]\.axis: 9 is out of range"),
        ({"name": None}, MalformedHeader, r"tensors\[0\]\.name: expected a string"),
    ],
)
def test_bad_tensor_entries_are_named(changes: dict[str, Any], error: type[ProtocolError], message: str) -> None:
    with pytest.raises(error, match=message):
        decode(tensor_header(activation(), 0, **changes))


def test_frame_count_and_lengths_are_checked() -> None:
    frames = encode(activation())
    with pytest.raises(TruncatedMessage, match="header lists 3 tensors but 2 tensor frames arrived"):
        decode(frames[:-1])
    with pytest.raises(TruncatedMessage, match=r"tensors\['skip'\]\.nbytes: header promises"):
        decode([frames[0], frames[1], bytes(frames[2])[:-3], frames[3]])
    with pytest.raises(TruncatedMessage, match="message has no frames"):
        decode([])


def test_garbage_header_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedHeader, match="header is not valid msgpack"):
        decode([b"\xc1\xc1\xc1"])
    with pytest.raises(MalformedHeader, match="header is a list, expected a map"):
        decode([msgpack.packb([1, 2])])
    with pytest.raises(VersionMismatch):
        decode([msgpack.packb({"kind": "activation"})])


def test_a_header_nested_deeper_than_the_decoder_recurses_is_malformed_not_a_crash() -> None:
    # A header map whose meta opens 200,000 one-element arrays: 200 KB, under max_header_bytes.
    fields = {k: v for k, v in header_of(activation()).items() if k != "meta"}
    header = msgpack.packb(fields)
    assert header[0] == 0x80 | len(fields)  # a fixmap: the count is in the first byte
    deep = bytes([header[0] + 1]) + header[1:] + msgpack.packb("meta") + b"\x91" * 200_000 + b"\xc0"
    with pytest.raises(MalformedHeader, match="header nests too deeply to decode") as caught:
        decode([deep])
    assert caught.value.field == "header"
    with pytest.raises(MalformedHeader, match="header nests too deeply to decode"):
        unpack(pack_header_only(deep))


def pack_header_only(header: bytes) -> bytes:
    """What :func:`pack` makes of a message with this header frame and no tensors."""
    return envelope_module._PACKED_PREFIX.pack(envelope_module.PACKED_MAGIC, len(header)) + header


def test_size_limits_are_enforced_before_allocating() -> None:
    sent = activation()
    with pytest.raises(MessageTooLarge, match="over the limit of 100"):
        decode(encode(sent), Limits(max_message_bytes=100))
    # docs/protocol.md section 3 step 2: an oversized header is a malformed header.
    with pytest.raises(MalformedHeader, match=r"header is .* bytes, over the limit of 10") as header_info:
        decode(encode(sent), Limits(max_header_bytes=10))
    assert header_info.value.field == "header"
    with pytest.raises(MessageTooLarge, match="tensors: 3 tensors, over the limit of 2"):
        decode(encode(sent), Limits(max_tensors=2))
    # A header claiming a huge tensor is refused from its shape alone.
    huge = tensor_header(sent, 2, shape=[1 << 30, 1 << 10], nbytes=8 << 40, raw_nbytes=8 << 40)
    with pytest.raises(MessageTooLarge, match=r"tensors\['attention_mask'\]"):
        decode(huge)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda p: p[:6], TruncatedMessage, "shorter than its 8-byte prefix"),
        (lambda p: b"XXXX" + p[4:], MalformedHeader, "payload starts with b'XXXX'"),
        (lambda p: p[:-5], TruncatedMessage, "tensors promise"),
        (lambda p: p + b"extra", TruncatedMessage, "tensors promise"),
        (lambda p: p[:4] + (10**6).to_bytes(4, "little") + p[8:], TruncatedMessage, "header length 1000000 runs past"),
    ],
)
def test_unpack_rejects_damaged_payloads(mutate: Any, error: type[ProtocolError], message: str) -> None:
    with pytest.raises(error, match=message):
        unpack(mutate(pack(activation())))


def test_header_uses_the_documented_keys() -> None:
    header = header_of(activation())
    assert header["v"] == PROTOCOL_VERSION
    assert set(header) == {
        "v",
        "kind",
        "id",
        "device",
        "plan",
        "plan_version",
        "split",
        "deadline",
        "ts",
        "meta",
        "tensors",
    }
    assert set(header["tensors"][0]) == {
        "name",
        "dtype",
        "shape",
        "codec",
        "compression",
        "nbytes",
        "raw_nbytes",
        "scale",
        "zero_point",
        "axis",
    }
    assert set(header["tensors"][2]) == {"name", "dtype", "shape", "codec", "compression", "nbytes", "raw_nbytes"}


_ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    7,
    1 << 40,
    2.5,
    "x",
    "",
    "activation",
    b"x",
    [],
    [1, -2],
    [1.5],
    ["a"],
    {},
    {"a": 1},
    {"a": "b"},
    {"a": True},
    {1: 2},
]
_TENSOR_KEYS = ("name", "dtype", "shape", "codec", "compression", "nbytes", "raw_nbytes", "scale", "zero_point", "axis")
_HEADER_KEYS = ("v", "kind", "id", "device", "plan", "plan_version", "split", "deadline", "ts", "meta", "tensors")
_DROPPED = object()


@pytest.mark.parametrize("codec", ["raw", "int8@1"])
def test_typed_fast_path_agrees_with_the_checked_path(codec: str) -> None:
    """Every key, set to each odd value or dropped: the msgspec-typed decoder accepts exactly what the
    field-by-field path accepts, decodes it the same, and leaves the errors to it."""
    sent = Envelope.with_arrays(
        Kind.ACTIVATION, {"x": np.arange(6.0, dtype=np.float32).reshape(2, 3)}, CodecSpec.parse(codec), device_id="a"
    )
    cases = [(key, value) for key in _HEADER_KEYS + _TENSOR_KEYS for value in [*_ODD_VALUES, _DROPPED]]
    for key, value in cases:
        header = header_of(sent)
        target = header if key in _HEADER_KEYS else header["tensors"][0]
        if value is _DROPPED:
            target.pop(key, None)
        else:
            target[key] = value
        frame = msgpack.packb(header)
        try:
            expected: Envelope | ProtocolError = envelope_module._parse_header_checked(frame, Limits())
            for spec in expected.tensors:
                spec.validate(max_bytes=Limits().max_message_bytes)
        except ProtocolError as exc:
            expected = exc
        typed = envelope_module._parse_header_typed(frame, Limits())
        case = f"{key}={'<dropped>' if value is _DROPPED else repr(value)}"
        if isinstance(expected, ProtocolError):
            assert typed is None or any(_invalid(spec) for spec in typed.tensors), case
        else:
            assert typed is None or typed == expected, case


def _invalid(spec: Any) -> bool:
    try:
        spec.validate(max_bytes=Limits().max_message_bytes)
    except ProtocolError:
        return True
    return False


def test_equal_tensor_entries_share_one_spec_but_int8_scales_do_not() -> None:
    raw = Envelope.with_arrays(Kind.ACTIVATION, {"x": np.ones((2, 3), np.float32)})
    first, second = decode(encode(raw)), decode(encode(raw))
    assert first.tensors[0] is second.tensors[0]
    quantised = Envelope.with_arrays(Kind.ACTIVATION, {"x": np.arange(6.0).reshape(2, 3)}, CodecSpec.parse("int8"))
    assert decode(encode(quantised)).tensors[0] is not decode(encode(quantised)).tensors[0]
