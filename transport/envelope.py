"""The envelope: one msgpack header frame, then one raw frame per tensor.

``encode`` turns an :class:`Envelope` into frames (ZeroMQ sends them as a
multipart message); ``pack`` joins them into one buffer for MQTT payloads and
files. ``decode`` and ``unpack`` validate every header field, and every length
against dtype x shape, before a single tensor byte is used. docs/protocol.md
is the normative description of this format.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Annotated, Any

import msgspec
import numpy as np

from tandem.throttled_log import clip
from tandem.transport.codec import CodecSpec, StaticScales, TensorSpec, decode_tensor, encode_tensor
from tandem.transport.errors import (
    MalformedHeader,
    MessageTooLarge,
    ProtocolError,
    TruncatedMessage,
    UnknownKind,
    VersionMismatch,
)

__all__ = [
    "PACKED_MAGIC",
    "PROTOCOL_VERSION",
    "Envelope",
    "Kind",
    "Limits",
    "decode",
    "encode",
    "new_request_id",
    "pack",
    "rejection_reply",
    "stamp",
    "unpack",
]

PROTOCOL_VERSION = 1
PACKED_MAGIC = b"TDM1"
_PACKED_PREFIX = struct.Struct("<4sI")
Buffer = bytes | bytearray | memoryview


class Kind(str, Enum):
    """What a message is; docs/protocol.md says who sends each kind."""

    ACTIVATION = "activation"
    RESULT = "result"
    ERROR = "error"
    HELLO = "hello"
    HEARTBEAT = "heartbeat"
    TELEMETRY = "telemetry"
    RECORD = "record"
    SAMPLE = "sample"
    ACK = "ack"
    PLAN = "plan"
    ARTIFACT = "artifact"


@dataclass(frozen=True)
class Limits:
    """Bounds a receiver enforces before it allocates anything."""

    max_message_bytes: int = 64 << 20
    max_header_bytes: int = 1 << 20
    max_tensors: int = 256


def new_request_id() -> str:
    """A fresh, unique request id: 128 random bits as 32 hex characters."""
    return os.urandom(16).hex()


@dataclass
class Envelope:
    """One message: routing and timing fields, free-form ``meta``, and tensors.

    ``tensors[i]`` describes ``frames[i]``. ``sender`` is set by the channel
    that received the envelope (the peer to answer); it never goes on the wire. Build one with :meth:`with_arrays`
    and read its tensors back with :meth:`arrays`.
    """

    kind: Kind
    request_id: str = field(default_factory=new_request_id)
    device_id: str = ""
    plan_id: str = ""
    plan_version: int = 0
    split_id: str = ""
    deadline: float | None = None
    timestamps: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorSpec] = field(default_factory=list)
    frames: list[Buffer] = field(default_factory=list)
    sender: str | None = field(default=None, compare=False)

    @classmethod
    def with_arrays(
        cls,
        kind: Kind,
        arrays: Mapping[str, np.ndarray],
        codec: CodecSpec | None = None,
        static: Mapping[str, StaticScales] | None = None,
        prequantised: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> Envelope:
        """An envelope carrying ``arrays`` encoded with ``codec`` (raw by default; see :meth:`add_arrays`)."""
        envelope = cls(kind=kind, **fields)
        envelope.add_arrays(arrays, codec, static, prequantised)
        return envelope

    def add_arrays(
        self,
        arrays: Mapping[str, np.ndarray],
        codec: CodecSpec | None = None,
        static: Mapping[str, StaticScales] | None = None,
        prequantised: Mapping[str, str] | None = None,
    ) -> None:
        """Encode ``arrays`` with ``codec`` and append them to this envelope.

        ``static``: calibrated scales by tensor name, for an ``int8-static`` codec; ``prequantised``: tensors
        a model already quantised (float16, or int8 with their ``static`` scales), by name, with the dtype
        they decode to.
        """
        spec = codec or CodecSpec()
        static = static or {}
        prequantised = prequantised or {}
        for name, array in arrays.items():
            header, frame = encode_tensor(name, array, spec, static.get(name), prequantised=prequantised.get(name))
            self.tensors.append(header)
            self.frames.append(frame)

    def arrays(
        self, *, max_bytes: int = Limits.max_message_bytes, as_sent: frozenset[str] = frozenset()
    ) -> dict[str, np.ndarray]:
        """Decode every tensor; raw tensors are zero-copy views of the frames.

        ``as_sent``: tensors to keep in their wire dtype (float16, int8), not dequantised.
        """
        try:
            return {
                spec.name: decode_tensor(spec, frame, max_bytes=max_bytes, dequantise=spec.name not in as_sent)
                for spec, frame in zip(self.tensors, self.frames, strict=True)
            }
        except ProtocolError as exc:
            _with_ids(exc, self)
            raise

    def reply(self, kind: Kind, **fields: Any) -> Envelope:
        """A reply that keeps this message's request, device, plan and split ids."""
        base = replace(self, kind=kind, timestamps=dict(self.timestamps), meta={}, tensors=[], frames=[], sender=None)
        return replace(base, **fields)

    def error_reply(self, code: str, message: str, *, field_name: str = "") -> Envelope:
        """An ERROR reply naming what was wrong and which field (ids over 4096 characters are not echoed)."""
        meta: dict[str, Any] = {"code": code, "field": field_name, "message": message}
        request_id = _echoed(self.request_id)
        if not request_id:
            meta["request_id_unread"] = True
        return self.reply(
            Kind.ERROR,
            meta=meta,
            request_id=request_id or new_request_id(),
            device_id=_echoed(self.device_id),
            plan_id=_echoed(self.plan_id),
            split_id=_echoed(self.split_id),
        )

    @property
    def wire_bytes(self) -> int:
        """Bytes of tensor data on the wire (headers excluded)."""
        return sum(spec.nbytes for spec in self.tensors)


def encode(envelope: Envelope) -> list[Buffer]:
    """Header frame followed by the tensor frames (no copies of tensor data)."""
    return [_HEADER_ENCODER.encode(_header_dict(envelope)), *envelope.frames]


def pack(envelope: Envelope) -> bytes:
    """One contiguous buffer: magic, header length, header, tensor bytes."""
    header, *frames = encode(envelope)
    return b"".join([_PACKED_PREFIX.pack(PACKED_MAGIC, len(header)), header, *frames])


def decode(frames: Sequence[Buffer], limits: Limits = Limits()) -> Envelope:
    """Validate and rebuild an envelope from a header frame and tensor frames."""
    if not frames:
        raise TruncatedMessage("message has no frames: expected a header frame", field="frames")
    total = sum(map(len, frames))
    if total > limits.max_message_bytes:
        exc = MessageTooLarge(
            f"message is {total} bytes, over the limit of {limits.max_message_bytes}", field="message"
        )
        if len(frames[0]) <= limits.max_header_bytes:
            _salvage_ids(exc, frames[0])
        raise exc
    envelope = _parse_header(frames[0], limits)
    try:
        _attach_frames(envelope, list(frames[1:]))
    except ProtocolError as exc:
        _with_ids(exc, envelope)
        raise
    return envelope


def unpack(payload: Buffer, limits: Limits = Limits()) -> Envelope:
    """Validate and rebuild an envelope from :func:`pack`'s single buffer."""
    view = memoryview(payload)
    if len(view) > limits.max_message_bytes:
        exc = MessageTooLarge(
            f"message is {len(view)} bytes, over the limit of {limits.max_message_bytes}", field="message"
        )
        if len(view) >= _PACKED_PREFIX.size:
            magic, header_len = _PACKED_PREFIX.unpack_from(view)
            if magic == PACKED_MAGIC and header_len <= min(limits.max_header_bytes, len(view) - _PACKED_PREFIX.size):
                _salvage_ids(exc, view[_PACKED_PREFIX.size : _PACKED_PREFIX.size + header_len])
        raise exc
    if len(view) < _PACKED_PREFIX.size:
        raise TruncatedMessage(f"payload is {len(view)} bytes, shorter than its 8-byte prefix", field="magic")
    magic, header_len = _PACKED_PREFIX.unpack_from(view)
    if magic != PACKED_MAGIC:
        raise MalformedHeader(f"payload starts with {bytes(magic)!r}, expected {PACKED_MAGIC!r}", field="magic")
    start = _PACKED_PREFIX.size
    if start + header_len > len(view):
        raise TruncatedMessage(
            f"header length {header_len} runs past the end of a {len(view)}-byte payload", field="header_length"
        )
    envelope = _parse_header(view[start : start + header_len], limits)
    offset = start + header_len
    frames: list[Buffer] = []
    for spec in envelope.tensors:
        frames.append(view[offset : offset + spec.nbytes])
        offset += spec.nbytes
    try:
        if offset != len(view):
            raise TruncatedMessage(
                f"tensors promise {offset - start - header_len} bytes, payload holds {len(view) - start - header_len}",
                field="tensors",
            )
        _attach_frames(envelope, frames)
    except ProtocolError as exc:
        _with_ids(exc, envelope)
        raise
    return envelope


def _header_dict(envelope: Envelope) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "kind": envelope.kind.value,
        "id": envelope.request_id,
        "device": envelope.device_id,
        "plan": envelope.plan_id,
        "plan_version": envelope.plan_version,
        "split": envelope.split_id,
        "deadline": envelope.deadline,
        "ts": envelope.timestamps,
        "meta": envelope.meta,
        "tensors": [spec.header_entry for spec in envelope.tensors],
    }


def _parse_header(frame: Buffer, limits: Limits) -> Envelope:
    try:
        if len(frame) > limits.max_header_bytes:
            raise MalformedHeader(
                f"header is {len(frame)} bytes, over the limit of {limits.max_header_bytes}", field="header"
            )
        envelope = _parse_header_typed(frame, limits) or _parse_header_checked(frame, limits)
    except ProtocolError as exc:
        _salvage_ids(exc, frame)
        raise
    try:
        decoded = 0
        for spec in envelope.tensors:
            spec.validate(max_bytes=limits.max_message_bytes)
            decoded += spec.raw_nbytes
        if decoded > limits.max_message_bytes:
            raise MessageTooLarge(
                f"tensors decode to {decoded} bytes, over the limit of {limits.max_message_bytes}",
                field="tensors",
            )
    except ProtocolError as exc:
        _with_ids(exc, envelope)
        raise
    return envelope


_KINDS = {kind.value: kind for kind in Kind}
_NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class _WireTensor(msgspec.Struct, frozen=True, gc=False):
    """A tensor entry typed as docs/protocol.md 1.4 has it; hashable, so equal entries share one spec."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    codec: str
    compression: str
    nbytes: _NonNegative
    raw_nbytes: _NonNegative
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis: int | None = None


class _WireHeader(msgspec.Struct):
    """The header typed as docs/protocol.md 1.1 has it, defaults included."""

    v: int
    kind: str
    id: str
    device: str = ""
    plan: str = ""
    plan_version: int = 0
    split: str = ""
    deadline: float | None = None
    ts: dict[str, float] = {}
    meta: dict[str, Any] = {}
    tensors: list[_WireTensor] = []


_HEADER_DECODER = msgspec.msgpack.Decoder(_WireHeader)
_HEADER_ENCODER = msgspec.msgpack.Encoder()
# A stream carries the same few tensor entries over and over; sharing their
# TensorSpec objects keeps each one's validation memo and header entry.
_SPECS_SEEN: dict[_WireTensor, TensorSpec] = {}
_SPECS_SEEN_MAX = 1024


def _parse_header_typed(frame: Buffer, limits: Limits) -> Envelope | None:
    """The common case, typed by msgspec in C; None sends the header to the checked path."""
    try:
        header = _HEADER_DECODER.decode(frame)
    except (msgspec.DecodeError, RecursionError):  # the checked path names what is wrong
        return None
    kind = _KINDS.get(header.kind)
    if (
        kind is None
        or header.v != PROTOCOL_VERSION
        or not header.id
        or len(header.tensors) > limits.max_tensors
        or (header.deadline is not None and not math.isfinite(header.deadline))
        or not all(map(math.isfinite, header.ts.values()))
    ):
        return None
    tensors = [_spec_for(entry) for entry in header.tensors]
    return Envelope(
        kind,
        header.id,
        header.device,
        header.plan,
        header.plan_version,
        header.split,
        header.deadline,
        header.ts,
        header.meta,
        tensors,
    )


def _spec_for(entry: _WireTensor) -> TensorSpec:
    if entry.scale:  # int8: its scales change with every message, not worth remembering
        return _new_spec(entry)
    spec = _SPECS_SEEN.get(entry)
    if spec is None:
        if len(_SPECS_SEEN) >= _SPECS_SEEN_MAX:
            _SPECS_SEEN.clear()
        spec = _SPECS_SEEN[entry] = _new_spec(entry)
    return spec


def _new_spec(entry: _WireTensor) -> TensorSpec:
    return TensorSpec(
        entry.name,
        entry.dtype,
        entry.shape,
        entry.codec,
        entry.compression,
        entry.nbytes,
        entry.raw_nbytes,
        entry.scale,
        entry.zero_point,
        entry.axis,
    )


def _parse_header_checked(frame: Buffer, limits: Limits) -> Envelope:
    """Field by field, so that the first bad one is named in the error."""
    try:
        header = msgspec.msgpack.decode(frame)
    except msgspec.DecodeError as exc:
        raise MalformedHeader(f"header is not valid msgpack: {exc}", field="header") from exc
    except RecursionError:  # msgspec checks its C recursion depth; a header this deep is hostile
        raise MalformedHeader("header nests too deeply to decode", field="header") from None
    if not isinstance(header, dict):
        raise MalformedHeader(f"header is a {type(header).__name__}, expected a map", field="header")
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0: the spec says int
        raise VersionMismatch(
            f"v: protocol version {clip(version)} is not supported; this build speaks {PROTOCOL_VERSION}", field="v"
        )
    return _read_fields_checked(header, limits)


def _read_fields_checked(header: dict[str, Any], limits: Limits) -> Envelope:
    fields = _HeaderReader(header)
    envelope = Envelope(
        kind=Kind.ACTIVATION,
        request_id=fields.text("id", required=True, non_empty=True),
        device_id=fields.text("device"),
    )
    try:
        envelope.kind = _kind(header.get("kind"))
        envelope.plan_id = fields.text("plan")
        envelope.plan_version = fields.integer("plan_version")
        envelope.split_id = fields.text("split")
        envelope.deadline = fields.optional_number("deadline")
        envelope.timestamps = fields.timestamps("ts")
        envelope.meta = fields.mapping("meta")
        envelope.tensors = [_parse_tensor(entry, i) for i, entry in enumerate(fields.tensor_list("tensors", limits))]
    except ProtocolError as exc:
        _with_ids(exc, envelope)
        raise
    return envelope


def _attach_frames(envelope: Envelope, frames: list[Buffer]) -> None:
    if len(frames) != len(envelope.tensors):
        raise TruncatedMessage(
            f"header lists {len(envelope.tensors)} tensors but {len(frames)} tensor frames arrived", field="frames"
        )
    for spec, frame in zip(envelope.tensors, frames, strict=True):
        if len(frame) != spec.nbytes:
            where = f"tensors[{spec.name!r}].nbytes"
            raise TruncatedMessage(
                f"{where}: header promises {spec.nbytes} bytes, frame holds {len(frame)}", field=where
            )
    envelope.frames = frames


def _kind(value: object) -> Kind:
    try:
        return Kind(value)
    except ValueError:
        known = ", ".join(k.value for k in Kind)
        raise UnknownKind(f"kind: unknown message kind {value!r}; known kinds: {known}", field="kind") from None


def _with_ids(exc: ProtocolError, envelope: Envelope) -> None:
    exc.keeping_ids(envelope)


class _Ids(msgspec.Struct):
    """The routing fields of a header, each of any type: what a rejected header still tells about its request."""

    id: Any = None
    device: Any = None
    plan: Any = None
    plan_version: Any = None
    split: Any = None


_IDS_DECODER = msgspec.msgpack.Decoder(_Ids)


def _salvage_ids(exc: ProtocolError, frame: Buffer) -> None:
    """Fill what ``exc`` lacks of id, device, plan, plan_version and split from a header that failed a check.

    Fields of the wrong type are left out; other keys are skipped unread, so
    this costs one pass over a header already within the message limit.
    """
    try:
        ids = _IDS_DECODER.decode(frame)
    except (msgspec.DecodeError, RecursionError):
        return
    text = {name: value for name, value in (("id", ids.id), ("device", ids.device), ("plan", ids.plan),
                                             ("split", ids.split)) if isinstance(value, str) and value}  # fmt: skip
    exc.request_id = exc.request_id or text.get("id")
    exc.device_id = exc.device_id or text.get("device")
    exc.plan_id = exc.plan_id or text.get("plan")
    exc.split_id = exc.split_id or text.get("split")
    if exc.plan_version is None and type(ids.plan_version) is int:
        exc.plan_version = ids.plan_version


def rejection_reply(exc: ProtocolError, *, device_id: str | None = None) -> Envelope:
    """The ``error`` that answers a message rejected by validation (docs/protocol.md 1.3).

    It keeps the id, device, plan, plan version and split the header gave,
    except a field that is itself at fault (a ``device`` that does not match
    the topic is not echoed as the reply's address); ``device_id`` overrides
    the device. A request whose id could not be read is answered with a fresh
    id (the spec requires one) and ``meta.request_id_unread`` set.
    """
    meta: dict[str, Any] = {"code": exc.code, "field": exc.field, "message": str(exc)}
    request_id = _echoed(exc.request_id)
    if not request_id:
        meta["request_id_unread"] = True
    device = device_id if device_id is not None else ("" if exc.field == "device" else _echoed(exc.device_id))
    return Envelope(
        kind=Kind.ERROR,
        request_id=request_id or new_request_id(),
        device_id=device,
        plan_id=_echoed(exc.plan_id),
        plan_version=exc.plan_version or 0,
        split_id=_echoed(exc.split_id),
        meta=meta,
    )


ECHO_MAX_CHARS = 4096


def _echoed(value: str | None) -> str:
    """``value`` as an error reply echoes it: not at all past 4096 characters, so a reply always fits a header."""
    return value if value and len(value) <= ECHO_MAX_CHARS else ""


class _HeaderReader:
    """Typed access to header fields; each failure names its field."""

    def __init__(self, header: dict[str, Any], prefix: str = "") -> None:
        self.header = header
        self.prefix = prefix

    def _bad(self, key: str, expected: str) -> MalformedHeader:
        value = self.header.get(key)
        name = f"{self.prefix}{key}"
        return MalformedHeader(f"{name}: expected {expected}, got {clip(value)}", field=name)

    def text(self, key: str, *, required: bool = False, non_empty: bool = False) -> str:
        value = self.header.get(key, None if required else "")
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        if non_empty and not value:
            raise self._bad(key, "a non-empty string")
        return value

    def integer(self, key: str, *, default: int | None = 0) -> int:
        value = self.header.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._bad(key, "an integer")
        return value

    def optional_number(self, key: str) -> float | None:
        value = self.header.get(key)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self._bad(key, "a finite number or nil")
        return float(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.header.get(key, {})
        if not isinstance(value, dict):
            raise self._bad(key, "a map")
        return value

    def timestamps(self, key: str) -> dict[str, float]:
        value = self.mapping(key)
        finite = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value.values())
        if not all(finite):
            raise self._bad(key, "a map of names to finite numbers")
        return {k: float(v) for k, v in value.items()}

    def tensor_list(self, key: str, limits: Limits) -> list[Any]:
        value = self.header.get(key, [])
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        if len(value) > limits.max_tensors:
            raise MessageTooLarge(f"{key}: {len(value)} tensors, over the limit of {limits.max_tensors}", field=key)
        return value

    def numbers(self, key: str, kind: type) -> tuple[Any, ...]:
        value = self.header.get(key, [])
        ok = isinstance(value, list) and all(
            isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool) for v in value
        )
        if not ok:
            raise self._bad(key, f"a list of {'numbers' if kind is float else 'integers'}")
        return tuple(kind(v) for v in value)


def _parse_tensor(entry: object, index: int) -> TensorSpec:
    if not isinstance(entry, dict):
        raise MalformedHeader(
            f"tensors[{index}]: expected a map, got {type(entry).__name__}", field=f"tensors[{index}]"
        )
    name = entry.get("name")
    prefix = f"tensors[{name!r}]." if isinstance(name, str) else f"tensors[{index}]."
    fields = _HeaderReader(entry, prefix)
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise fields._bad("shape", "a list of integers")
    axis = entry.get("axis")
    if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)):
        raise fields._bad("axis", "an integer or nil")
    return TensorSpec(
        name=fields.text("name", required=True),
        dtype=fields.text("dtype", required=True),
        shape=tuple(shape),
        codec=fields.text("codec", required=True),
        compression=fields.text("compression", required=True),
        nbytes=_non_negative(fields, "nbytes"),
        raw_nbytes=_non_negative(fields, "raw_nbytes"),
        scale=fields.numbers("scale", float),
        zero_point=fields.numbers("zero_point", int),
        axis=axis,
    )


def _non_negative(fields: _HeaderReader, key: str) -> int:
    value = fields.integer(key, default=None)
    if value < 0:
        raise fields._bad(key, "a non-negative integer")
    return value


def stamp(envelope: Envelope, name: str) -> None:
    """Record ``time.time()`` under ``name`` in the envelope's timestamps."""
    envelope.timestamps[name] = time.time()
