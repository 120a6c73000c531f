"""The fp16 fast path gives NumPy's bits, both ways, and its embedded Cast models are what onnx builds."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import tandem.transport.fp16 as fp16
from tandem.transport.codec import CodecSpec, decode_tensor, encode_tensor


@pytest.mark.parametrize("size", [7, 8192, 300_000])
def test_float16_bits_equal_numpys_both_ways(size: int) -> None:
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * rng.choice([1e-7, 1e-3, 1.0, 1e3, 1e5], size)).astype(np.float32)
    x[:6] = [6e-8, -2.9e-8, 65504.0, 65519.0, -0.0, np.nan]  # subnormal, a tie, the max, rounds to inf, -0, NaN
    clipped = np.clip(x, -65504, 65504)
    wire = fp16.to_float16(clipped)
    assert wire.dtype == np.dtype("<f2")
    np.testing.assert_array_equal(wire.view(np.uint16), clipped.astype(np.float16).view(np.uint16))
    back = fp16.from_float16(wire, "float32")
    np.testing.assert_array_equal(back.view(np.uint32), wire.astype(np.float32).view(np.uint32))


def test_the_fp16_codec_clips_to_the_finite_range_and_keeps_nan() -> None:
    x = np.linspace(-1e6, 1e6, 20_000, dtype=np.float32)
    x[5] = np.nan
    header, frame = encode_tensor("x", x, CodecSpec.parse("fp16"))
    out = decode_tensor(header, frame)
    assert np.isnan(out[5]) and np.nanmax(np.abs(out)) == 65504.0
    assert np.isfinite(np.delete(out, 5)).all()


def test_numpy_takes_over_without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fp16, "_sessions", {"to16": None, "from16": None})  # what _build gives without it
    x = np.arange(20_000, dtype=np.float32) / 7
    np.testing.assert_array_equal(fp16.to_float16(x), x.astype(np.float16))


@pytest.mark.parametrize(("direction", "source", "target"), [("to16", TensorProto.FLOAT, TensorProto.FLOAT16),
                                                             ("from16", TensorProto.FLOAT16, TensorProto.FLOAT)])
def test_the_embedded_models_are_the_one_node_casts(direction: str, source: int, target: int) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=target)], f"cast_{direction}",
        [helper.make_tensor_value_info("x", source, None)], [helper.make_tensor_value_info("y", target, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert fp16._CAST_MODELS[direction] == model.SerializeToString()
