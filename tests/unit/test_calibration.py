"""Calibration sets: images with a declared preprocessing, .npz and .npy; bytes p50/p95, every sample verified."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from tandem.contracts.plan import load_plan
from tandem.models.photos import write_crops
from tandem.partitioner.calibration import CalibrationError, load_calibration, preprocess_image
from tandem.partitioner.config import Calibration, ImagePreprocess, PartitionConfig
from tandem.partitioner.pipeline import partition
from tandem.partitioner.shapes import MissingInputShape, ShapeHints

# A small conv net on an image with open height/width: enough structure for several cuts, outputs class scores.
CONV = """
<ir_version: 8, opset_import: ["" : 17]>
conv (float[1, 3, height, width] image) => (float[1, 5] scores) <float[4, 3, 3, 3] w1, float[5, 4] w2> {
    c = Conv<pads=[1, 1, 1, 1]>(image, w1)
    r = Relu(c)
    p = GlobalAveragePool(r)
    f = Flatten(p)
    w2t = Transpose(w2)
    scores = MatMul(f, w2t)
}
"""
FAST = {"edge": {"source": "spec"}, "cloud": {"source": "spec"}, "codecs": ["raw", "fp16+lz4", "int8+zstd"]}


@pytest.fixture(scope="module")
def conv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = onnx.parser.parse_model(CONV)
    rng = np.random.default_rng(0)
    for name, shape in (("w1", (4, 3, 3, 3)), ("w2", (5, 4))):
        weights = rng.standard_normal(shape).astype(np.float32)
        model.graph.initializer.append(onnx.numpy_helper.from_array(weights, name))
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("conv") / "conv.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("crops")
    write_crops(folder, 12, seed=3)
    return folder


def test_images_are_preprocessed_as_declared_at_the_given_size(conv: Path, crops: Path) -> None:
    settings = Calibration(
        max_samples=5, preprocess=ImagePreprocess(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    )
    found = load_calibration(crops, onnx.load(str(conv)), settings, ShapeHints(dims={"height": 40, "width": 56}))
    assert found.kind == "images" and len(found.samples) == 5 and found.files[0] == "crop-000.png"
    assert {s["image"].shape for s in found.samples} == {(1, 3, 40, 56)}
    assert found.preprocess is not None
    assert found.preprocess["height"] == 40 and found.preprocess["std"] == [0.229, 0.224, 0.225]
    # the same photo through preprocess_image by hand gives the same input
    from PIL import Image

    pixels = np.asarray(Image.open(crops / "crop-000.png").convert("RGB"))
    again = preprocess_image(pixels, 40, 56, settings.preprocess)
    np.testing.assert_array_equal(again, found.samples[0]["image"])
    assert len({float(s["image"].mean()) for s in found.samples}) == 5  # distinct inputs


def test_images_for_a_model_with_open_dims_need_the_size(conv: Path, crops: Path) -> None:
    with pytest.raises(MissingInputShape, match=r"input 'image' \[1, 3, 'height', 'width'\]: dim 2 'height'"):
        load_calibration(crops, onnx.load(str(conv)), Calibration())


def test_npz_and_npy_samples(conv: Path, tmp_path: Path) -> None:
    model = onnx.load(str(conv))
    stack = np.random.default_rng(1).standard_normal((6, 1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", image=stack)
    found = load_calibration(tmp_path / "cal.npz", model, Calibration(max_samples=4))
    assert found.kind == "npz" and len(found.samples) == 4
    np.testing.assert_array_equal(found.samples[3]["image"], stack[3])
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "a.npy", stack[:, 0])  # a batch [6, 3, 8, 8]: six batch-1 samples
    np.save(folder / "b.npy", stack[0])  # one sample [1, 3, 8, 8]
    found = load_calibration(folder, model, Calibration())
    assert found.kind == "npy" and len(found.samples) == 7 and found.samples[0]["image"].shape == (1, 3, 8, 8)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"img": np.zeros((2, 1, 3, 4, 4), np.float32)}, r"missing \['image'\], unknown \['img'\]"),
        ({"image": np.zeros((2, 1, 3, 4, 4), np.float64)}, "input 'image' is float64, the model expects float32"),
        ({"image": np.zeros((2, 4, 4), np.float32)}, r"input 'image' has shape \[2, 4, 4\]; expected \[samples"),
    ],
)
def test_npz_that_does_not_fit_names_the_input(conv: Path, tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(CalibrationError, match=message):
        load_calibration(tmp_path / "bad.npz", onnx.load(str(conv)), Calibration())


def test_a_missing_or_mixed_set_is_named(conv: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"--calibration .*nothing-here: not found"):
        load_calibration(tmp_path / "nothing-here", onnx.load(str(conv)), Calibration())
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CalibrationError, match=r"a file must be an \.npz"):
        load_calibration(tmp_path / "a.txt", onnx.load(str(conv)), Calibration())


def test_partition_on_a_calibration_set_records_quantiles_and_checks_every_sample(
    conv: Path, crops: Path, tmp_path: Path
) -> None:
    config = PartitionConfig.model_validate(
        FAST | {"inputs": {"dims": {"height": 48, "width": 64}}, "calibration": {"max_samples": 12}}
    )
    plan = partition(str(conv), tmp_path / "plan", config, calibration=crops, progress=False)
    assert plan.data is not None and plan.data.source == "calibration" and plan.data.samples == 12
    assert plan.data.preprocess is not None and plan.data.preprocess["width"] == 64
    assert plan.model.inputs[0].shape == [1, 3, 48, 64]
    assert any("from --dim" in note for note in plan.model.shape_notes)
    for split in plan.splits:
        if split.kind == "edge-only":
            continue
        for result in split.codecs:
            assert result.samples == 12
            assert result.wire_bytes_p50 is not None and result.wire_bytes_p95 is not None
            assert result.wire_bytes_p50 <= result.wire_bytes_p95
            assert result.fidelity is not None and result.fidelity.kind == "classes" and result.fidelity.samples == 12
            assert result.verified == (result.max_error is not None and result.max_error <= result.tolerance)
    # compressed bytes of real photos vary from one crop to the next
    cloud_only = plan.split("cloud-only").codec("int8+zstd")
    assert cloud_only.wire_bytes_p95 is not None and cloud_only.wire_bytes_p50 is not None
    assert cloud_only.wire_bytes_p95 > cloud_only.wire_bytes_p50
    # the plan's own parts compose back on every sample with every codec it offers
    again = load_plan(tmp_path / "plan")
    assert again.data == plan.data


def test_min_fidelity_withdraws_a_codec_that_misses_it(conv: Path, crops: Path, tmp_path: Path) -> None:
    config = PartitionConfig.model_validate(
        FAST
        | {
            "inputs": {"dims": {"height": 32, "width": 32}},
            "calibration": {"max_samples": 8},
            "fidelity": {"min_fidelity": 1.0, "kinds": {"scores": "other"}},
            "verification": {"int8": 1.0},
        }
    )
    plan = partition(str(conv), tmp_path / "plan", config, calibration=crops, progress=False)
    results = [r for s in plan.splits if s.kind != "edge-only" for r in s.codecs]
    assert all(r.fidelity is not None and r.fidelity.kind == "other" for r in results)
    below = [r for r in results if r.fidelity is not None and r.fidelity.value < 1.0]
    for result in below:
        assert not result.verified
        assert result.rejected == f"fidelity {result.fidelity.value:.4g} < min_fidelity 1"  # type: ignore[union-attr]
    assert all(r.verified for r in results if r.codec == "raw")
