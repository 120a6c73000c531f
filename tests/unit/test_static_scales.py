"""int8-static: scales calibrated once on the calibration set, recorded in the plan, used by the edge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from sklearn.datasets import load_sample_images

from tandem.cloud_hub.config import HubConfig
from tandem.contracts.plan import load_plan
from tandem.edge_agent.plan_view import load_agent_plan
from tandem.partitioner.cli import main
from tandem.partitioner.static_scales import calibrate_scales
from tandem.transport.codec import CodecSpec, StaticScales, decode_tensor, encode_tensor
from tandem.transport.envelope import Envelope, Kind

# A float input; a 0-d float (s), an int64 shape and a bool mask are activations a cut can cross.
MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
m (float[1, 3, 12, 10] images) => (float[1, 3, 12, 10] out) {
    r = Relu(images)
    s = ReduceMean<keepdims=0>(r)
    shape = Shape(r)
    b = Greater(r, s)
    bf = Cast<to=1>(b)
    e = Expand(s, shape)
    m = Mul(bf, e)
    out = Add(m, r)
}
"""
SPEC_ONLY = "edge: {source: spec}\ncloud: {source: spec}\n"


def _photo_crops(count: int, size: int = 32) -> list[np.ndarray]:
    """Crops of scikit-learn's two sample photos, normalised as (pixel - 127) / 128, NCHW."""
    rng = np.random.default_rng(0)
    crops = []
    for index in range(count):
        photo = load_sample_images().images[index % 2]
        top, left = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        pixels = photo[top : top + size, left : left + size].astype(np.float32)
        crops.append(((pixels - 127.0) / 128.0).transpose(2, 0, 1)[None])
    return crops


def test_the_codec_text_round_trips_and_only_int8_takes_static_scales() -> None:
    for text in ("int8-static", "int8-static+zstd", "int8-static@1+lz4"):
        spec = CodecSpec.parse(text)
        assert spec.static and spec.quantiser == "int8" and str(spec) == text
    with pytest.raises(ValueError, match="calibrated \\(static\\) scales only apply to int8, not 'fp16'"):
        CodecSpec.parse("fp16-static")


def test_static_scales_reproduce_a_photo_pixel_grid_that_per_message_scales_blur() -> None:
    crops = _photo_crops(24)
    scales = calibrate_scales(({"x": c} for c in crops), ["x"], [None])[None]["x"]
    assert scales.scale == (1 / 128,) and scales.axis is None  # the set spans pixels 0..255
    spec, dynamic = CodecSpec.parse("int8-static+zstd"), CodecSpec.parse("int8+zstd")
    blurred = 0
    for crop in crops:
        header, frame = encode_tensor("x", crop, spec, scales)
        assert header.codec == "int8" and header.scale == scales.scale  # int8's wire format, the plan's scales
        assert np.array_equal(decode_tensor(header, bytes(frame)), crop)  # exact: the grid is the pixels'
        header, frame = encode_tensor("x", crop, dynamic)
        blurred += int(not np.array_equal(decode_tensor(header, bytes(frame)), crop))
    assert blurred > 0  # a crop whose own range is narrower than 0..255 gets a grid off the pixels'


def test_a_message_beyond_the_calibrated_range_widens_its_scales_instead_of_saturating() -> None:
    scales = StaticScales.from_range(np.float32(-1.0), np.float32(1.0))
    inside = np.array([-1.0, 0.0, 0.5, 1.0], np.float32)
    header, frame = encode_tensor("x", inside, CodecSpec.parse("int8-static"), scales)
    assert header.scale == scales.scale  # the calibrated scales, as they are
    beyond = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 7.0], np.float32)
    header, frame = encode_tensor("x", beyond, CodecSpec.parse("int8-static"), scales)
    assert header.scale[0] > scales.scale[0]  # this message's own, wider scales
    assert np.abs(decode_tensor(header, bytes(frame)) - beyond).max() <= header.scale[0] / 2 + 1e-6


def test_values_the_readers_clip_anyway_do_not_widen_the_scales() -> None:
    relu6 = StaticScales.from_range(np.float32(0.0), np.float32(6.0), limits=(0.0, 6.0))
    x = np.array([-30.0, 0.0, 3.0, 6.0, 40.0], np.float32)  # a conv output before its ReLU6
    header, frame = encode_tensor("x", x, CodecSpec.parse("int8-static"), relu6)
    assert header.scale == relu6.scale
    got = decode_tensor(header, bytes(frame))
    assert np.allclose(np.clip(got, 0, 6), np.clip(x, 0, 6), atol=relu6.scale[0] / 2 + 1e-6)  # after the ReLU6


def test_missing_or_misfit_scales_name_the_tensor() -> None:
    spec = CodecSpec.parse("int8-static@1")
    with pytest.raises(ValueError, match="tensor 'act': int8-static needs the tensor's calibrated scales"):
        encode_tensor("act", np.ones((1, 4, 2), np.float32), spec)
    three = StaticScales((0.1, 0.1, 0.1), (0, 0, 0), axis=1)
    with pytest.raises(ValueError, match=r"tensor 'act': calibrated scales \(3 along axis 1\) do not fit its shape"):
        encode_tensor("act", np.ones((1, 4, 2), np.float32), spec, three)
    with pytest.raises(ValueError, match="replies have no calibrated scales"):
        HubConfig.model_validate({"plans": [], "reply_codec": "int8-static"})


def test_a_partition_records_each_crossing_tensors_scales_and_the_agent_sends_with_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = onnx.parser.parse_model(MODEL)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    images = rng.normal(0, 2, (12, 1, 3, 12, 10)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", images=images)
    config = tmp_path / "p.yaml"
    config.write_text(SPEC_ONLY + "codecs: [raw, int8-static+zstd, int8-static@1]\n")
    out = tmp_path / "plan"
    args = ["partition", str(path), "--out", str(out), "--config", str(config), "--no-progress"]
    args += ["--calibration", str(tmp_path / "cal.npz")]
    for tensor in ("r", "s", "shape", "b"):
        args += ["--cut", tensor]
    assert main(args) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("int8-static")]
    assert sum("[in the graph: err " in line for line in printed) == 2, printed  # the cut's two codecs
    cut = next(split for split in load_plan(out).splits if split.kind == "split")
    relu = np.maximum(images, 0)
    for codec, axis in (("int8-static+zstd", None), ("int8-static@1", 1)):
        result = cut.codec(codec)
        assert result.verified, result.rejected
        assert result.scales is not None and set(result.scales) == {"r", "s"}  # int64 and bool travel raw
        want = calibrate_scales(({"r": r, "s": r.mean()} for r in relu), ["r", "s"], [axis])[axis]
        for name in ("r", "s"):
            recorded = result.scales[name]
            assert recorded.axis == want[name].axis and recorded.zero_point == list(want[name].zero_point)
            assert recorded.scale == pytest.approx(want[name].scale, rel=1e-6)
        assert result.scales["s"].axis is None and len(result.scales["r"].scale) == (3 if axis else 1)
    in_graph = cut.codec("int8-static@1").in_graph  # the cut's r and s leave the edge part quantised
    assert in_graph is not None and in_graph.verified and set(in_graph.tensors) == {"r", "s"}
    assert load_agent_plan(out, "int8-static@1").split(cut.id).prequantised == {"r": "float32", "s": "float32"}
    agent_plan = load_agent_plan(out, "int8-static@1", in_graph=False)  # the host quantises, with these scales
    option = agent_plan.split(cut.id)
    assert set(option.scales) == {"r", "s"}
    tensors = {"r": relu[0], "s": relu[0].mean(), "shape": np.array([1, 3, 12, 10]), "b": relu[0] > 0.5}
    envelope = Envelope.with_arrays(Kind.ACTIVATION, tensors, CodecSpec.parse("int8-static@1"), option.scales)
    headers = {spec.name: spec for spec in envelope.tensors}
    assert list(headers["r"].scale) == cut.codec("int8-static@1").scales["r"].scale  # type: ignore[index]
    assert headers["shape"].codec == "raw" and headers["b"].codec == "raw"
    decoded = envelope.arrays()
    assert np.abs(decoded["r"] - relu[0]).max() <= max(headers["r"].scale) / 2 + 1e-6


def test_a_model_quantised_tensor_goes_on_the_wire_as_is_and_a_wrong_one_is_named() -> None:
    scales = StaticScales((0.5,), (0,))
    q = np.array([[-3, 0, 4]], np.int8)
    header, frame = encode_tensor("feat", q, CodecSpec.parse("int8-static+zstd"), scales, prequantised="float32")
    assert (header.codec, header.dtype, header.scale) == ("int8", "float32", (0.5,))
    assert np.array_equal(decode_tensor(header, bytes(frame)), np.array([[-1.5, 0.0, 2.0]], np.float32))
    half = np.array([1.5, -2.25], np.float16)
    header, frame = encode_tensor("h", half, CodecSpec.parse("fp16+lz4"), prequantised="float32")
    assert header.codec == "fp16" and np.array_equal(decode_tensor(header, bytes(frame)), half.astype(np.float32))
    with pytest.raises(ValueError, match=r"tensor 'feat': a model-quantised tensor must be float16, or int8 with"):
        encode_tensor("feat", q.astype(np.int32), CodecSpec.parse("int8-static"), scales, prequantised="float32")
    with pytest.raises(ValueError, match=r"tensor 'feat': .* got int8 with no scale\(s\)"):
        encode_tensor("feat", q, CodecSpec.parse("int8-static"), prequantised="float32")


# p (values in about [-40, 40]) feeds only a ReLU6 (Clip 0..6, bounds from Constant nodes as exporters write them);
# q also feeds an Add, which sees all of it.
SATURATED = """
<ir_version: 8, opset_import: ["" : 17]>
sat (float[1, 8, 16] x) => (float[1, 8, 16] y, float[1, 8, 16] z) <float w = {20.0}> {
    lo = Constant <value = float {0.0}> ()
    hi = Constant <value = float {6.0}> ()
    p = Mul(x, w)
    y = Clip(p, lo, hi)
    q = Mul(x, w)
    r = Relu(q)
    z = Add(r, q)
}
"""


def test_a_tensor_its_readers_saturate_is_calibrated_over_what_they_let_through(tmp_path: Path) -> None:
    path = tmp_path / "sat.onnx"
    onnx.save(onnx.parser.parse_model(SATURATED), str(path))
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "cal.npz", x=rng.normal(0, 1, (8, 1, 8, 16)).astype(np.float32))
    config = tmp_path / "p.yaml"
    config.write_text(SPEC_ONLY + "codecs: [raw, int8, int8-static]\n")
    out = tmp_path / "plan"
    args = ["partition", str(path), "--out", str(out), "--config", str(config), "--no-progress"]
    assert main([*args, "--calibration", str(tmp_path / "cal.npz"), "--cut", "p", "--cut", "q"]) == 0
    cut = next(split for split in load_plan(out).splits if split.kind == "split")
    static = cut.codec("int8-static")
    assert static.scales is not None
    assert static.scales["p"].scale[0] == pytest.approx(6.0 / 255, rel=1e-6)  # [0, 6], not the observed range
    assert static.scales["q"].scale[0] > 0.15  # the Add reads q whole: its observed range, about [-60, 60]
    assert static.scales["p"].limits == (0.0, 6.0) and static.scales["q"].limits == (None, None)
    dynamic = cut.codec("int8")
    assert static.max_error is not None and dynamic.max_error is not None
    assert static.max_error < dynamic.max_error
