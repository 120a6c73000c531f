"""Tensor codecs: how an array becomes bytes on the wire and back.

A codec is a quantiser followed by an optional lossless compressor:

- ``raw``: the array's own bytes, any supported dtype, no copy.
- ``fp16``: floating tensors sent as IEEE half (values clipped to +-65504).
- ``int8``: affine quantisation ``q = round(x / scale) + zero_point``, with one
  scale per tensor (``int8``) or one per channel along an axis (``int8@1``),
  taken from each message's own range.
- ``int8-static``: the same quantisation with scales calibrated once on a
  calibration set (:class:`StaticScales`, recorded in plan.yaml per crossing
  tensor); values outside the calibrated range saturate. The wire format is
  int8's: the header carries the scales as for any int8 tensor, so a receiver
  cannot tell the two apart and needs no plan to decode.

Then ``+lz4`` or ``+zstd`` compresses the quantised bytes. A codec is written
as text in configs and benchmarks: ``raw``, ``fp16+lz4``, ``int8@1+zstd``.
Quantising codecs apply to floating tensors only; integer and boolean tensors
(token ids, attention masks) always travel ``raw``. Where a codec cannot apply
to one tensor it falls back for that tensor alone (:func:`tensor_codec` says to
what and why): ``int8@AXIS`` on a tensor without that axis (a 0-d or 1-d one),
or with fewer than 8 values per channel along it, uses one scale per tensor,
and ``int8`` on a tensor holding NaN or infinities sends it ``raw``. The header names the codec each tensor really has.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import Any

import lz4.block
import numpy as np
import zstandard

from tandem.transport.errors import MessageTooLarge, TensorSpecError, TruncatedMessage, UnknownCodec
from tandem.transport.fp16 import from_float16, to_float16

__all__ = [
    "COMPRESSIONS",
    "DTYPES",
    "QUANTISERS",
    "CodecSpec",
    "StaticScales",
    "TensorSpec",
    "channel_axis",
    "decode_tensor",
    "dtype_name",
    "encode_tensor",
    "tensor_codec",
]

QUANTISERS = ("raw", "fp16", "int8")
COMPRESSIONS = ("none", "lz4", "zstd")
DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
_FLOAT_DTYPES = ("float16", "float32", "float64")
_FP16_MAX = float(np.finfo(np.float16).max)
_FP32_TINY = float(np.finfo(np.float32).tiny)
_STATIC = "-static"
MIN_PER_CHANNEL = 8  # values per channel below which int8@AXIS scales the whole tensor at once
_ZSTD_LEVEL = 1  # on int8 activations as small as level 3 (within 1 %) and 1.5x faster to encode
_local = threading.local()


@dataclass(frozen=True)
class CodecSpec:
    """What to do to floating tensors before they go on the wire."""

    quantiser: str = "raw"
    compression: str = "none"
    axis: int | None = None
    static: bool = False
    """int8 with calibrated scales (``int8-static``) rather than each message's own range."""

    def __post_init__(self) -> None:
        if self.quantiser not in QUANTISERS:
            raise ValueError(f"unknown codec {self.quantiser!r}: expected one of {', '.join(QUANTISERS)}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"unknown compression {self.compression!r}: expected one of {', '.join(COMPRESSIONS)}")
        if self.axis is not None and self.quantiser != "int8":
            raise ValueError(f"a channel axis only applies to int8, not {self.quantiser!r}")
        if self.static and self.quantiser != "int8":
            raise ValueError(f"calibrated (static) scales only apply to int8, not {self.quantiser!r}")

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        """Read ``raw``, ``fp16+lz4``, ``int8@1+zstd``, ``int8-static@1+zstd`` and the like."""
        quant, _, compression = text.strip().partition("+")
        name, _, axis_text = quant.partition("@")
        static = name.endswith(_STATIC)
        name = name.removesuffix(_STATIC) if static else name
        axis: int | None = None
        if axis_text:
            try:
                axis = int(axis_text)
            except ValueError:
                raise ValueError(f"codec {text!r}: channel axis {axis_text!r} is not an integer") from None
        return cls(quantiser=name, compression=compression or "none", axis=axis, static=static)

    def __str__(self) -> str:
        name = self.quantiser + _STATIC if self.static else self.quantiser
        text = name if self.axis is None else f"{name}@{self.axis}"
        return text if self.compression == "none" else f"{text}+{self.compression}"


@dataclass(frozen=True)
class StaticScales:
    """Calibrated int8 scales and zero points of one tensor: one pair, or one per channel along ``axis``."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    limits: tuple[float | None, float | None] = (None, None)
    """What the tensor's readers let through (a ReLU6: 0 and 6; None: unbounded); values beyond need no levels."""

    def __post_init__(self) -> None:
        if not self.scale or len(self.scale) != len(self.zero_point):
            raise ValueError(f"{len(self.scale)} scales for {len(self.zero_point)} zero points")
        if not all(math.isfinite(s) and s > 0 for s in self.scale):
            raise ValueError("every scale must be finite and positive")
        if not all(-128 <= z <= 127 for z in self.zero_point):
            raise ValueError("zero points must lie in [-128, 127]")

    @classmethod
    def from_range(
        cls,
        low: np.ndarray,
        high: np.ndarray,
        axis: int | None = None,
        limits: tuple[float | None, float | None] = (None, None),
    ) -> StaticScales:
        """The scales that map ``[min(low, 0), max(high, 0)]`` (per channel: arrays) onto [-128, 127]."""
        scale, zero = _affine(np.minimum(np.asarray(low, np.float32), 0), np.maximum(np.asarray(high, np.float32), 0))
        return cls(tuple(float(v) for v in scale.reshape(-1)), tuple(int(v) for v in zero.reshape(-1)), axis, limits)

    def channels_fit(self, shape: tuple[int, ...]) -> bool:
        """Whether these scales fit a tensor of ``shape`` (the axis exists and holds one entry per scale)."""
        if self.axis is None:
            return len(self.scale) == 1
        return -len(shape) <= self.axis < len(shape) and shape[self.axis] == len(self.scale)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's entry in an envelope header.

    ``dtype`` and ``shape`` describe the decoded array. ``raw_nbytes`` is the
    size of the quantised bytes before compression; ``nbytes`` the size of the
    frame on the wire.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    codec: str = "raw"
    compression: str = "none"
    nbytes: int = 0
    raw_nbytes: int = 0
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis: int | None = None

    @functools.cached_property
    def header_entry(self) -> dict[str, Any]:
        """This spec as its map in an envelope header (docs/protocol.md); built once, do not modify."""
        entry: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "codec": self.codec,
            "compression": self.compression,
            "nbytes": self.nbytes,
            "raw_nbytes": self.raw_nbytes,
        }
        if self.codec == "int8":
            entry.update(scale=list(self.scale), zero_point=list(self.zero_point), axis=self.axis)
        return entry

    @property
    def wire_dtype(self) -> np.dtype:
        """The little-endian dtype of the quantised bytes."""
        return _WIRE_DTYPES[self.dtype if self.codec == "raw" else self.codec]

    def validate(self, *, max_bytes: int) -> None:
        """Check every field against the others before any byte is trusted.

        A spec that passed once is remembered (specs are immutable): on the
        instance, and for equal specs in an LRU cache, so the per-message cost
        of a stream of same-shaped tensors is a lookup.
        """
        if self.__dict__.get("_valid_for") == max_bytes:
            return
        _validate_cached(self, max_bytes)
        # frozen: set the memo past __setattr__; it is not a field, so eq and hash ignore it
        self.__dict__["_valid_for"] = max_bytes

    def _validate(self, max_bytes: int) -> None:
        where = f"tensors[{self.name!r}]"
        if self.codec not in QUANTISERS:
            raise UnknownCodec(f"{where}.codec: unknown codec {self.codec!r}", field=f"{where}.codec")
        if self.compression not in COMPRESSIONS:
            raise UnknownCodec(
                f"{where}.compression: unknown compression {self.compression!r}", field=f"{where}.compression"
            )
        if self.dtype not in DTYPES:
            raise TensorSpecError(f"{where}.dtype: unsupported dtype {self.dtype!r}", field=f"{where}.dtype")
        if self.codec != "raw" and self.dtype not in _FLOAT_DTYPES:
            raise TensorSpecError(
                f"{where}.codec: {self.codec} only encodes floating tensors, not {self.dtype}", field=f"{where}.codec"
            )
        if any(dim < 0 for dim in self.shape):
            raise TensorSpecError(f"{where}.shape: negative dimension in {list(self.shape)}", field=f"{where}.shape")
        expected = math.prod(self.shape) * self.wire_dtype.itemsize
        if expected > max_bytes or self.raw_nbytes > max_bytes:
            raise MessageTooLarge(
                f"{where}: {max(expected, self.raw_nbytes)} bytes decoded is over the limit of {max_bytes}",
                field=f"{where}.raw_nbytes",
            )
        if self.raw_nbytes != expected:
            raise TensorSpecError(
                f"{where}.raw_nbytes: {self.raw_nbytes} does not match {self.wire_dtype.name} x "
                f"{list(self.shape)} = {expected} bytes",
                field=f"{where}.raw_nbytes",
            )
        if self.compression == "none" and self.nbytes != self.raw_nbytes:
            raise TensorSpecError(
                f"{where}.nbytes: {self.nbytes} differs from raw_nbytes {self.raw_nbytes} without compression",
                field=f"{where}.nbytes",
            )
        if self.codec == "int8":
            self._validate_quantisation(where)

    def _validate_quantisation(self, where: str) -> None:
        channels = 1
        if self.axis is not None:
            if not -len(self.shape) <= self.axis < len(self.shape):
                raise TensorSpecError(
                    f"{where}.axis: {self.axis} is out of range for shape {list(self.shape)}", field=f"{where}.axis"
                )
            channels = self.shape[self.axis]
        if len(self.scale) != channels or len(self.zero_point) != channels:
            raise TensorSpecError(
                f"{where}.scale: expected {channels} scale and zero_point values, got "
                f"{len(self.scale)} and {len(self.zero_point)}",
                field=f"{where}.scale",
            )
        if not all(math.isfinite(s) and s > 0 for s in self.scale):
            raise TensorSpecError(f"{where}.scale: every scale must be finite and positive", field=f"{where}.scale")
        if not all(-128 <= z <= 127 for z in self.zero_point):
            raise TensorSpecError(f"{where}.zero_point: values must lie in [-128, 127]", field=f"{where}.zero_point")


_WIRE_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in DTYPES} | {
    "fp16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
}


@functools.lru_cache(maxsize=256)
def dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, remembered: numpy builds that string in Python on every access."""
    return dtype.name


@functools.lru_cache(maxsize=4096)
def _validate_cached(spec: TensorSpec, max_bytes: int) -> None:
    spec._validate(max_bytes)


def tensor_codec(
    dtype: str, shape: tuple[int, ...], spec: CodecSpec, *, finite: bool = True
) -> tuple[str, int | None, str | None]:
    """The quantiser and channel axis ``spec`` gives a tensor of this dtype and shape, and why, if it falls back.

    ``finite``: whether the tensor holds only finite values (int8 cannot carry NaN or infinities).
    """
    if spec.quantiser == "raw":
        return "raw", None, None
    if dtype not in _FLOAT_DTYPES:
        return "raw", None, f"{spec.quantiser} quantises floating tensors only; {dtype} travels raw"
    if spec.quantiser == "fp16":
        return "fp16", None, None
    if not finite:
        return "raw", None, "holds NaN or infinite values, which int8 cannot carry; sent raw"
    axis, why = channel_axis(shape, spec.axis)
    return "int8", axis, why


def channel_axis(shape: tuple[int, ...], axis: int | None) -> tuple[int | None, str | None]:
    """The axis int8 scales a tensor of ``shape`` along when asked for ``axis``, and why not, if not.

    A tensor without the axis (0-d, 1-d), or with fewer than MIN_PER_CHANNEL values per channel along it (an
    audio frame's time axis), gets one scale for the whole tensor: a scale per value or two is no quantiser.
    """
    if axis is None:
        return None, None
    if not -len(shape) <= axis < len(shape):
        return None, f"has no axis {axis} (shape {list(shape)}); one int8 scale for the tensor"
    per_channel = math.prod(shape) // max(1, shape[axis])
    if shape[axis] > 1 and per_channel < MIN_PER_CHANNEL:
        return None, (
            f"has {per_channel} value(s) per channel along axis {axis} (shape {list(shape)}), under "
            f"{MIN_PER_CHANNEL}; one int8 scale for the tensor"
        )
    return axis, None


def encode_tensor(
    name: str,
    array: np.ndarray,
    spec: CodecSpec,
    static: StaticScales | None = None,
    *,
    prequantised: str | None = None,
) -> tuple[TensorSpec, memoryview | bytes]:
    """Quantise and compress ``array``; return its header entry and its frame (see :func:`tensor_codec`).

    ``static``: the tensor's calibrated scales, required where ``spec`` is ``int8-static`` and the tensor
    is quantised (a ValueError names the tensor otherwise). ``prequantised``: ``array`` is already on the
    wire, quantised inside a model (float16, or int8 with ``static``), and decodes to this dtype.
    """
    if prequantised is not None:
        return _encode_prequantised(name, np.asarray(array), spec, static, prequantised)
    array = np.asarray(array)
    dtype = dtype_name(array.dtype)
    if dtype not in DTYPES:
        raise TypeError(f"tensor {name!r}: dtype {dtype} cannot be sent; supported: {', '.join(DTYPES)}")
    finite = spec.quantiser != "int8" or dtype not in _FLOAT_DTYPES or bool(np.isfinite(array).all())
    quantiser, axis, _ = tensor_codec(dtype, array.shape, spec, finite=finite)
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    if quantiser == "raw":
        wire = array.astype(array.dtype.newbyteorder("<"), copy=False)
    elif quantiser == "fp16":
        wire = to_float16(_within_fp16(array))
    elif spec.static:
        wire, scale, zero_point, axis = _quantise_static(name, array, static)
    else:
        wire, scale, zero_point = _quantise_int8(name, array, axis)
    return _framed(name, dtype, quantiser, wire, spec.compression, scale, zero_point, axis)


def _encode_prequantised(
    name: str, wire: np.ndarray, spec: CodecSpec, static: StaticScales | None, dtype: str
) -> tuple[TensorSpec, memoryview | bytes]:
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"tensor {name!r}: a quantised tensor decodes to a floating dtype, not {dtype!r}")
    scale: tuple[float, ...] = ()
    zero_point: tuple[int, ...] = ()
    axis: int | None = None
    if wire.dtype == np.float16:
        codec = "fp16"
    elif wire.dtype == np.int8 and static is not None and static.channels_fit(wire.shape):
        codec, scale, zero_point, axis = "int8", static.scale, static.zero_point, static.axis
    else:
        raise ValueError(
            f"tensor {name!r}: a model-quantised tensor must be float16, or int8 with scales that fit its shape "
            f"{list(wire.shape)}; got {wire.dtype} with {'no' if static is None else len(static.scale)} scale(s)"
        )
    return _framed(name, dtype, codec, wire, spec.compression, scale, zero_point, axis)


def _framed(
    name: str,
    dtype: str,
    codec: str,
    wire: np.ndarray,
    compression: str,
    scale: tuple[float, ...],
    zero_point: tuple[int, ...],
    axis: int | None,
) -> tuple[TensorSpec, memoryview | bytes]:
    """The header and frame of a tensor already in its wire dtype: compress, and describe what was done."""
    raw = _as_bytes(wire)
    frame = _compress(raw, compression)
    header = TensorSpec(
        name=name,
        dtype=dtype,
        shape=wire.shape,
        codec=codec,
        compression=compression,
        nbytes=len(frame),
        raw_nbytes=len(raw),
        scale=scale,
        zero_point=zero_point,
        axis=axis,
    )
    return header, frame


def decode_tensor(
    spec: TensorSpec, frame: memoryview | bytes | bytearray, *, max_bytes: int = 1 << 31, dequantise: bool = True
) -> np.ndarray:
    """Validate ``spec`` against ``frame`` and rebuild the array (zero-copy for ``raw``).

    ``dequantise=False``: an fp16 or int8 tensor comes back as its wire array (float16, int8), for a model that
    starts with the matching cast or DequantizeLinear.
    """
    spec.validate(max_bytes=max_bytes)
    if len(frame) != spec.nbytes:
        raise _truncated(spec, len(frame))
    raw = frame if spec.compression == "none" else _decompress(spec, frame)
    wire = np.ndarray(spec.shape, spec.wire_dtype, raw)  # a view of raw; validate() made the sizes agree
    if spec.codec == "raw" or not dequantise:
        return wire if wire.dtype.isnative else wire.astype(wire.dtype.newbyteorder("="))
    if spec.codec == "fp16":
        return from_float16(wire, spec.dtype)
    return _dequantise_int8(spec, wire)


def _truncated(spec: TensorSpec, got: int) -> TruncatedMessage:
    where = f"tensors[{spec.name!r}].nbytes"
    return TruncatedMessage(f"{where}: header promises {spec.nbytes} bytes, frame holds {got}", field=where)


def _as_bytes(array: np.ndarray) -> memoryview:
    contiguous = np.ascontiguousarray(array)
    return memoryview(contiguous.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


def _within_fp16(array: np.ndarray) -> np.ndarray:
    """``array`` clipped to float16's finite range; untouched (no copy) when it is inside it already.

    Two reductions at memory speed decide; a NaN makes them NaN, and NaN stays NaN through the clip.
    """
    if array.size and array.dtype == np.float32:
        low, high = float(array.min()), float(array.max())
        if low >= -_FP16_MAX and high <= _FP16_MAX:
            return array
    return np.clip(array, -_FP16_MAX, _FP16_MAX)


def _quantise_int8(
    name: str, array: np.ndarray, axis: int | None
) -> tuple[np.ndarray, tuple[float, ...], tuple[int, ...]]:
    x = array.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"tensor {name!r}: int8 cannot encode NaN or infinite values")
    if axis is not None and not -x.ndim <= axis < x.ndim:
        raise ValueError(f"tensor {name!r}: int8 channel axis {axis} is out of range for shape {list(x.shape)}")
    reduce_axes = tuple(i for i in range(x.ndim) if axis is None or i != axis % x.ndim)
    if x.size:  # np.asarray: on a 0-d tensor the reductions return NumPy scalars, not arrays
        lo = np.asarray(np.minimum(x.min(axis=reduce_axes, keepdims=True), 0.0), np.float32)
        hi = np.asarray(np.maximum(x.max(axis=reduce_axes, keepdims=True), 0.0), np.float32)
    else:
        keep = [1] * x.ndim if axis is None else [1 if i != axis % x.ndim else x.shape[i] for i in range(x.ndim)]
        lo = hi = np.zeros(keep, np.float32)
    scale, zero = _affine(lo, hi)
    return (
        _quantise(x, scale, zero),
        tuple(float(s) for s in scale.reshape(-1)),
        tuple(int(z) for z in zero.reshape(-1)),
    )


def _affine(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point mapping ``[lo, hi]`` (lo <= 0 <= hi) onto [-128, 127]."""
    scale = np.asarray((hi.astype(np.float64) - lo) / 255.0, np.float32)
    scale = np.where(scale == 0, np.float32(1.0), scale)
    # a subnormal scale (subnormal values, ~1e-41) has too few bits to quantise with; the smallest normal one does
    scale = np.maximum(scale, np.float32(_FP32_TINY))
    zero = np.clip(np.round(-128.0 - lo / scale), -128, 127)
    return scale, zero


def _quantise(x: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """``clip(round(x / scale) + zero, -128, 127)`` as int8, in place in one temporary (each step a pass at
    memory speed)."""
    t = np.asarray(np.divide(x, scale))  # np.asarray: a 0-d tensor divides to a NumPy scalar, which out= refuses
    np.rint(t, out=t)
    np.add(t, zero, out=t)
    np.clip(t, -128, 127, out=t)
    return t.astype(np.int8)


def _quantise_static(
    name: str, array: np.ndarray, static: StaticScales | None
) -> tuple[np.ndarray, tuple[float, ...], tuple[int, ...], int | None]:
    if static is None:
        raise ValueError(f"tensor {name!r}: int8-static needs the tensor's calibrated scales, and none were given")
    x = array.astype(np.float32, copy=False)
    if not static.channels_fit(x.shape):
        raise ValueError(
            f"tensor {name!r}: calibrated scales ({len(static.scale)} along axis {static.axis}) do not fit its "
            f"shape {list(x.shape)}"
        )
    shape = [1] * x.ndim
    if static.axis is not None:
        shape[static.axis] = len(static.scale)
    scale = np.asarray(static.scale, np.float32).reshape(shape)
    zero = np.asarray(static.zero_point, np.float32).reshape(shape)
    wider = _widened(x, scale, zero, static) if x.size else None
    if wider is None:  # the header then carries the calibrated scales exactly as given
        return _quantise(x, scale, zero), static.scale, static.zero_point, static.axis
    scale, zero = wider
    q = _quantise(x, scale, zero)
    return q, tuple(float(v) for v in scale.reshape(-1)), tuple(int(v) for v in zero.reshape(-1)), static.axis


def _widened(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray, static: StaticScales
) -> tuple[np.ndarray, np.ndarray] | None:
    """None (keep the calibrated scale and zero point), or, where this message reaches beyond the calibrated
    range (and beyond what the readers would clip anyway), ones widened to cover it: a drifted input costs resolution
    for that message, never saturation. Two reductions at memory speed decide (encode_tensor sent a
    tensor holding NaN or infinities raw before it got here)."""
    reduce_axes = tuple(i for i in range(x.ndim) if static.axis is None or i != static.axis % x.ndim)
    low = x.min(axis=reduce_axes, keepdims=True)
    high = x.max(axis=reduce_axes, keepdims=True)
    floor, ceiling = static.limits
    if floor is not None:
        low = np.maximum(low, np.float32(floor))
    if ceiling is not None:
        high = np.minimum(high, np.float32(ceiling))
    calibrated_low = (-128.0 - zero) * scale
    calibrated_high = (127.0 - zero) * scale
    if not ((low < calibrated_low - scale / 2).any() or (high > calibrated_high + scale / 2).any()):
        return None
    low = np.minimum(np.minimum(low, calibrated_low), 0).astype(np.float32)
    high = np.maximum(np.maximum(high, calibrated_high), 0).astype(np.float32)
    return _affine(low, high)


def _dequantise_int8(spec: TensorSpec, wire: np.ndarray) -> np.ndarray:
    shape = [1] * wire.ndim
    if spec.axis is not None:
        shape[spec.axis] = wire.shape[spec.axis]
    scale = np.asarray(spec.scale, np.float32).reshape(shape)
    zero = np.asarray(spec.zero_point, np.float32).reshape(shape)
    # np.asarray: arithmetic on a 0-d array yields a NumPy scalar, which ONNX Runtime does not take as a tensor
    return np.asarray(((wire.astype(np.float32) - zero) * scale).astype(spec.dtype, copy=False))


def _compress(raw: memoryview, compression: str) -> memoryview | bytes:
    if compression == "none":
        return raw
    if compression == "lz4":
        return lz4.block.compress(raw, store_size=False)
    return _zstd_compressor().compress(raw)


def _decompress(spec: TensorSpec, frame: memoryview | bytes | bytearray) -> memoryview | bytes | bytearray:
    if spec.compression == "none":
        return frame
    where = f"tensors[{spec.name!r}].compression"
    try:
        if spec.compression == "lz4":
            raw = lz4.block.decompress(frame, uncompressed_size=spec.raw_nbytes)
        else:
            declared = zstandard.frame_content_size(frame)
            if declared != spec.raw_nbytes:
                raise TensorSpecError(
                    f"{where}: zstd frame declares {declared} bytes, header says {spec.raw_nbytes}", field=where
                )
            raw = _zstd_decompressor().decompress(frame, max_output_size=spec.raw_nbytes)
    except (lz4.block.LZ4BlockError, zstandard.ZstdError) as exc:
        raise TensorSpecError(f"{where}: {spec.compression} data is corrupt: {exc}", field=where) from exc
    if len(raw) != spec.raw_nbytes:
        raise TensorSpecError(f"{where}: decompressed to {len(raw)} bytes, header says {spec.raw_nbytes}", field=where)
    return raw


def _zstd_compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_local, "zc"):
        _local.zc = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return _local.zc


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "zd"):
        _local.zd = zstandard.ZstdDecompressor()
    return _local.zd
