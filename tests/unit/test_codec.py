"""Tensor codec: round trips, error bounds, and rejection of inconsistent specs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tandem.transport.codec import CodecSpec, TensorSpec, channel_axis, decode_tensor, encode_tensor, tensor_codec
from tandem.transport.errors import MessageTooLarge, TensorSpecError, TruncatedMessage, UnknownCodec

COMPRESSIONS = ["none", "lz4", "zstd"]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7)
finite = {"allow_nan": False, "allow_infinity": False}


def roundtrip(array: np.ndarray, codec: str) -> tuple[TensorSpec, np.ndarray]:
    spec, frame = encode_tensor("x", array, CodecSpec.parse(codec))
    return spec, decode_tensor(spec, bytes(frame))


@settings(max_examples=60, deadline=None)
@given(
    array=hnp.arrays(
        st.sampled_from(
            [np.bool_, np.uint8, np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64]
        ),
        shapes,
    ),
    compression=st.sampled_from(COMPRESSIONS),
)
def test_raw_round_trip_is_exact_for_every_dtype(array: np.ndarray, compression: str) -> None:
    spec, out = roundtrip(array, f"raw+{compression}" if compression != "none" else "raw")
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert spec.raw_nbytes == array.nbytes


@settings(max_examples=60, deadline=None)
@given(
    array=hnp.arrays(np.float32, shapes, elements=st.floats(-60000, 60000, width=32, **finite)),
    compression=st.sampled_from(COMPRESSIONS),
)
def test_fp16_error_is_within_half_precision(array: np.ndarray, compression: str) -> None:
    spec, out = roundtrip(array, "fp16" if compression == "none" else f"fp16+{compression}")
    assert out.dtype == np.float32 and out.shape == array.shape
    # fp16 keeps 11 significant bits: relative error <= 2^-11, absolute near zero <= 2^-25.
    bound = np.abs(array) * 2.0**-11 + 2.0**-24
    assert np.all(np.abs(out - array) <= bound)
    assert spec.raw_nbytes == array.size * 2


@settings(max_examples=60, deadline=None)
@given(
    array=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=4, max_side=6),
        elements=st.floats(-1e4, 1e4, width=32, **finite),
    ),
    per_channel=st.booleans(),
    compression=st.sampled_from(COMPRESSIONS),
)
def test_int8_error_is_within_half_a_step(array: np.ndarray, per_channel: bool, compression: str) -> None:
    axis = array.ndim - 1 if per_channel else None
    codec = CodecSpec(quantiser="int8", compression=compression, axis=axis)
    spec, frame = encode_tensor("x", array, codec)
    out = decode_tensor(spec, bytes(frame))
    assert spec.axis == channel_axis(array.shape, axis)[0]  # too few values per channel: one scale
    shape = [1] * array.ndim
    if spec.axis is not None:
        shape[spec.axis] = array.shape[spec.axis]
    scale = np.asarray(spec.scale, np.float32).reshape(shape)
    assert np.all(np.abs(out - array) <= 0.5 * scale * 1.001 + np.abs(array) * 1e-6)
    assert len(spec.scale) == (array.shape[spec.axis] if spec.axis is not None else 1)


def test_per_channel_int8_needs_enough_values_per_channel_and_says_so() -> None:
    frame = np.linspace(-1, 1, 512, dtype=np.float32).reshape(1, 512)  # an audio frame: axis 1 is time
    spec, _ = roundtrip(frame, "int8@1")
    assert spec.axis is None and len(spec.scale) == 1
    reason = tensor_codec("float32", (1, 512), CodecSpec.parse("int8@1"))[2]
    assert reason == "has 1 value(s) per channel along axis 1 (shape [1, 512]), under 8; one int8 scale for the tensor"
    spec, _ = roundtrip(np.ones((1, 4, 8), np.float32), "int8@1")
    assert spec.axis == 1 and len(spec.scale) == 4


def test_int8_keeps_zeros_exact_so_relu_sparsity_compresses() -> None:
    rng = np.random.default_rng(0)
    relu = np.maximum(rng.normal(size=(1, 64, 28, 28)).astype(np.float32), 0)
    spec, out = roundtrip(relu, "int8@1+zstd")
    assert np.all(out[relu == 0] == 0)
    assert spec.nbytes < relu.nbytes / 4


def test_raw_decode_is_zero_copy() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    spec, frame = encode_tensor("x", array, CodecSpec())
    assert np.shares_memory(np.frombuffer(frame, np.uint8), array)
    out = decode_tensor(spec, frame)
    assert np.shares_memory(out, array)


def test_non_float_tensors_travel_raw_whatever_the_codec() -> None:
    mask = np.ones((1, 16), np.int64)
    spec, out = roundtrip(mask, "int8+lz4")
    assert spec.codec == "raw" and out.dtype == np.int64
    np.testing.assert_array_equal(out, mask)


def test_int8_sends_a_tensor_with_non_finite_values_raw() -> None:
    array = np.array([1.0, np.nan, -np.inf], np.float32)
    spec, out = roundtrip(array, "int8+zstd")
    assert spec.codec == "raw"
    np.testing.assert_array_equal(out, array)
    assert "NaN or infinite" in (tensor_codec("float32", (3,), CodecSpec.parse("int8"), finite=False)[2] or "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fp8", "unknown codec 'fp8'"),
        ("fp16+gzip", "unknown compression 'gzip'"),
        ("fp16@1", "a channel axis only applies to int8"),
        ("int8@c", "channel axis 'c' is not an integer"),
    ],
)
def test_codec_text_errors_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CodecSpec.parse(text)


def test_codec_text_round_trips() -> None:
    for text in ["raw", "fp16+lz4", "int8@1+zstd", "int8"]:
        assert str(CodecSpec.parse(text)) == text


def _spec(**changes: object) -> tuple[TensorSpec, bytes]:
    spec, frame = encode_tensor("feat", np.ones((2, 3), np.float32), CodecSpec())
    return dataclasses.replace(spec, **changes), bytes(frame)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"dtype": "complex64"}, TensorSpecError, r"tensors\['feat'\]\.dtype: unsupported dtype 'complex64'"),
        ({"codec": "fp8"}, UnknownCodec, r"tensors\['feat'\]\.codec: unknown codec 'fp8'"),
        ({"compression": "gzip"}, UnknownCodec, r"compression: unknown compression 'gzip'"),
        ({"shape": (2, 4)}, TensorSpecError, r"raw_nbytes: 24 does not match float32 x \[2, 4\] = 32 bytes"),
        ({"shape": (2, -3)}, TensorSpecError, r"shape: negative dimension"),
        ({"shape": (1 << 20, 1 << 20)}, MessageTooLarge, r"over the limit"),
        ({"nbytes": 20}, TensorSpecError, r"nbytes: 20 differs from raw_nbytes 24"),
        ({"codec": "int8", "dtype": "int64"}, TensorSpecError, r"int8 only encodes floating tensors"),
    ],
)
def test_inconsistent_specs_are_rejected_with_the_field_named(
    changes: dict[str, object], error: type[Exception], message: str
) -> None:
    spec, frame = _spec(**changes)
    with pytest.raises(error, match=message):
        decode_tensor(spec, frame, max_bytes=1 << 20)


def test_truncated_frame_is_rejected() -> None:
    spec, frame = _spec()
    with pytest.raises(TruncatedMessage, match=r"header promises 24 bytes, frame holds 20"):
        decode_tensor(spec, frame[:20])


def test_int8_scale_count_must_match_channels() -> None:
    spec, frame = encode_tensor("q", np.ones((8, 3), np.float32), CodecSpec(quantiser="int8", axis=1))
    bad = dataclasses.replace(spec, scale=spec.scale[:2])
    with pytest.raises(TensorSpecError, match=r"expected 3 scale and zero_point values, got 2 and 3"):
        decode_tensor(bad, bytes(frame))
    with pytest.raises(TensorSpecError, match="finite and positive"):
        decode_tensor(dataclasses.replace(spec, scale=(1.0, 0.0, 1.0)), bytes(frame))


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_corrupt_or_lying_compressed_data_is_rejected(compression: str) -> None:
    spec, frame = encode_tensor("z", np.zeros((64, 64), np.float32), CodecSpec(compression=compression))
    with pytest.raises(TensorSpecError, match=r"tensors\['z'\]\.compression"):
        decode_tensor(spec, (b"\x00" if compression == "zstd" else b"\xff") * len(frame))
    # A header that under-declares the decompressed size must not let the data expand past it.
    smaller = dataclasses.replace(spec, shape=(32, 64), raw_nbytes=32 * 64 * 4)
    with pytest.raises(TensorSpecError, match=r"tensors\['z'\]\.compression"):
        decode_tensor(smaller, bytes(frame))
