"""Bring your own model: open input dims are named, never set to 1; 0-d, int and bool tensors cross with every codec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
import yaml

from tandem.contracts.plan import load_plan
from tandem.partitioner.cli import main
from tandem.partitioner.graph import analyse
from tandem.partitioner.shapes import MissingInputShape, ShapeHints, parse_dim, parse_input_shape, resolve_shapes
from tandem.transport.codec import CodecSpec, decode_tensor, encode_tensor

# A float input with a named batch dim and open height/width; a 0-d float (s), an int64 shape and a bool mask
# are activations a cut can cross.
DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
dyn (float[N, 3, height, width] images) => (float[N, 3, height, width] out) {
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
UNNAMED = """
<ir_version: 8, opset_import: ["" : 17]>
un (float[1, 3, ?, 8] x, float[4] y) => (float[1, 3, ?, 8] out) {
    out = Relu(x)
}
"""
CODECS = ["raw", "fp16", "int8", "int8@1+zstd", "int8+zstd", "fp16+lz4"]
SPEC_ONLY = "edge: {source: spec}\ncloud: {source: spec}\n"


def _save(tmp_path: Path, text: str, name: str) -> Path:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def dynamic(tmp_path: Path) -> Path:
    return _save(tmp_path, DYNAMIC, "dyn")


def test_open_dims_stop_with_each_input_dim_and_the_flag(dynamic: Path) -> None:
    with pytest.raises(MissingInputShape) as caught:
        analyse(dynamic)
    text = str(caught.value)
    assert f"{dynamic}: the model leaves input dims open and Tandem will not guess them" in text
    assert "input 'images' ['N', 3, 'height', 'width']: dim 2 'height', dim 3 'width' unknown" in text
    assert "give --input-shape images=1x3x<height>x<width>" in text
    assert "--dim width=<size>" in text and "--calibration PATH" in text


def test_an_unnamed_open_dim_is_named_by_index(tmp_path: Path) -> None:
    path = _save(tmp_path, UNNAMED, "un")
    with pytest.raises(MissingInputShape, match=r"input 'x' \[1, 3, \?, 8\]: dim 2 \(unnamed\) unknown; "):
        analyse(path)


def test_sizes_from_input_shape_or_dim_names_are_used_and_noted(dynamic: Path) -> None:
    graph = analyse(dynamic, hints=ShapeHints(shapes={"images": (1, 3, 17, 23)}))
    assert graph.tensors["images"].shape == (1, 3, 17, 23)
    assert graph.tensors["s"].shape == ()
    assert graph.declared["images"] == ["N", 3, "height", "width"]
    assert graph.synthetic
    graph = analyse(dynamic, hints=ShapeHints(dims={"height": 9, "width": 5}))
    assert graph.tensors["out"].shape == (1, 3, 9, 5)
    assert "input 'images' dim 0 'N' (batch) = 1 by default" in graph.shape_notes
    assert "input 'images' dim 2 'height' = 9 from --dim" in graph.shape_notes


@pytest.mark.parametrize(
    ("hints", "message"),
    [
        (ShapeHints(shapes={"img": (1, 3, 4, 4)}), "--input-shape names input 'img', which the model does not have"),
        (ShapeHints(shapes={"images": (1, 3, 4)}), "has 3 dims, but input 'images' has 4"),
        (ShapeHints(shapes={"images": (1, 4, 4, 4)}), "dim 1 of input 'images' is fixed at 3 in the model, not 4"),
        (ShapeHints(dims={"heigth": 4}), "--dim names 'heigth', which no input declares; named dims of this model"),
    ],
)
def test_a_size_that_does_not_fit_names_what_is_wrong(dynamic: Path, hints: ShapeHints, message: str) -> None:
    with pytest.raises(MissingInputShape, match=message):
        resolve_shapes(onnx.load(str(dynamic)), hints)


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (parse_input_shape, "images", "is not NAME=DIMS; write it like images=1x3x640x640"),
        (parse_input_shape, "images=1x3xHx4", "are not integers separated by 'x'"),
        (parse_input_shape, "images=1x0", "every dim must be >= 1"),
        (parse_dim, "height", "is not DIM_NAME=SIZE"),
        (parse_dim, "height=big", "size 'big' is not an integer"),
    ],
)
def test_flag_text_errors(parse: object, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(text)  # type: ignore[operator]


def test_cli_without_shapes_fails_naming_the_flag_and_writes_nothing(
    dynamic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan"
    assert main(["partition", str(dynamic), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "tandem partition: error:" in err and "--input-shape images=1x3x<height>x<width>" in err
    assert not out.exists()
    assert main(["partition", str(dynamic), "--out", str(out), "--input-shape", "images=1x3"]) == 1
    assert "has 2 dims, but input 'images' has 4" in capsys.readouterr().err
    assert main(["partition", str(dynamic), "--out", str(out), "--dim", "height=x"]) == 1
    assert "--dim 'height=x': size 'x' is not an integer" in capsys.readouterr().err


def test_a_scalar_int_and_bool_crossing_a_cut_work_with_every_codec(
    dynamic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(SPEC_ONLY + f"codecs: {CODECS}\n")
    out = tmp_path / "plan"
    args = ["partition", str(dynamic), "--out", str(out), "--config", str(config), "--no-progress"]
    args += ["--input-shape", "images=1x3x17x23"]
    for tensor in ("r", "s", "shape", "b"):
        args += ["--cut", tensor]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "data: synthetic, 1 sample(s): bytes, errors and fidelity come from ONE synthetic sample" in printed
    plan = load_plan(out)
    assert plan.model.inputs[0].shape == [1, 3, 17, 23]
    assert plan.model.inputs[0].declared == ["N", 3, "height", "width"]
    assert plan.data is not None and plan.data.source == "synthetic" and plan.data.samples == 1
    cut = next(split for split in plan.splits if split.kind == "split")
    crossing = {t.name: (t.dtype, t.shape) for t in cut.crossing}
    assert crossing["s"] == ("float32", []) and crossing["shape"] == ("int64", [4]) and crossing["b"][0] == "bool"
    for result in cut.codecs:
        assert result.verified, (result.codec, result.rejected)
        assert result.max_error is not None and result.max_error <= result.tolerance
    int8_axis = cut.codec("int8@1+zstd")
    scalar = "'s' float32 []: has no axis 1 (shape []); one int8 scale for the tensor"
    assert any(scalar in f for f in int8_axis.fallbacks)
    assert any("'b' bool" in f and "quantises floating tensors only" in f for f in int8_axis.fallbacks)
    assert not cut.codec("raw").fallbacks
    on_disk = yaml.safe_load((out / "plan.yaml").read_text())
    assert on_disk["data"]["note"].startswith("bytes, errors and fidelity come from ONE synthetic sample")


@pytest.mark.parametrize("codec", CODECS)
def test_a_0d_float_tensor_round_trips_as_an_array(codec: str) -> None:
    header, frame = encode_tensor("s", np.float32(0.75), CodecSpec.parse(codec))
    decoded = decode_tensor(header, bytes(frame))
    assert isinstance(decoded, np.ndarray) and decoded.shape == () and decoded.dtype == np.float32
    assert abs(float(decoded) - 0.75) < 0.01


# Channel 0 is ~1000, channel 1 ~0.01 and the only one the output keeps: one int8 scale for the whole
# tensor rounds channel 1 to nothing; one scale per channel keeps it.
CHANNELS = """
<ir_version: 8, opset_import: ["" : 17]>
ch (float[1, 2, 16] x) => (float[1, 2, 16] y) <float[1, 2, 1] w = {0.0, 100000.0}> {
    y = Mul(x, w)
}
"""


def test_per_channel_int8_is_offered_where_per_tensor_int8_misses(tmp_path: Path) -> None:
    path = _save(tmp_path, CHANNELS, "ch")
    rng = np.random.default_rng(0)
    x = np.stack(
        [rng.random((1, 2, 16), dtype=np.float32) * np.array([[[1000.0], [0.01]]], np.float32) for _ in range(6)]
    )
    np.savez(tmp_path / "cal.npz", x=x.astype(np.float32))
    config = tmp_path / "p.yaml"
    config.write_text(SPEC_ONLY + "codecs: [raw, int8+zstd]\n")
    out = tmp_path / "plan"
    args = ["partition", str(path), "--out", str(out), "--config", str(config), "--no-progress"]
    assert main([*args, "--calibration", str(tmp_path / "cal.npz")]) == 0
    cloud_only = load_plan(out).split("cloud-only")
    per_tensor, per_channel = cloud_only.codec("int8+zstd"), cloud_only.codec("int8@1+zstd")
    assert not per_tensor.verified and per_tensor.max_error is not None and per_tensor.max_error > 0.5
    assert per_tensor.rejected is not None and "int8@1+zstd (one scale per channel) passes" in per_tensor.rejected
    assert per_channel.verified and per_channel.max_error is not None and per_channel.max_error < 0.01
    assert per_channel.samples == 6
    config.write_text(SPEC_ONLY + "codecs: [raw, int8+zstd]\nverification: {per_channel: false}\n")
    assert main([*args, "--calibration", str(tmp_path / "cal.npz")]) == 0
    assert [r.codec for r in load_plan(out).split("cloud-only").codecs] == ["raw", "int8+zstd"]


def test_profile_takes_the_same_size_flags(dynamic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "profile.json"
    args = ["profile", str(dynamic), "--device-name", "here", "--out", str(out), "--repetitions", "2", "--no-progress"]
    assert main(args) == 1
    assert "give --input-shape images=1x3x<height>x<width>" in capsys.readouterr().err
    assert main([*args, "--dim", "height=8", "--dim", "width=8"]) == 0, capsys.readouterr().err
    assert out.is_file()
