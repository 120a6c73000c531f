"""Real third-party graphs through the whole pipeline: export, partition on real inputs, compose back on others.

The corpus (tandem.models.corpus): EfficientNet-Lite2 with its real weights, a YOLOv8-style detector and
torchvision's DeepLabV3-MobileNetV3 with open height/width, and the silero-vad package's recurrent ONNX file.
Each is partitioned with a calibration set of 32 real inputs (crops of the bundled photos; synthesised tones
for the VAD); then every kept split is run again, outside the partitioner, on 32 *other* real inputs with
every codec the plan offers (int8-static with the plan's calibrated scales; at a cut also the parts with the
codec inside, whose edge output goes on the wire as is), and must match the unsplit model within the plan's
tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tandem.contracts.plan import Plan, SplitPlan, load_plan
from tandem.edge_agent.plan_view import static_scales
from tandem.models import corpus
from tandem.models.photos import photo_crops, write_crops
from tandem.partitioner.calibration import preprocess_image
from tandem.partitioner.config import ImagePreprocess, PartitionConfig
from tandem.partitioner.pipeline import partition
from tandem.partitioner.shapes import MissingInputShape
from tandem.transport.codec import CodecSpec, StaticScales, decode_tensor, encode_tensor

pytestmark = pytest.mark.slow

SAMPLES = 32
BASE = {
    "edge": {"emulation_factor": 20},  # a slow edge, so cuts compete with both ends
    "link": {"bandwidths_mbps": [1, 10, 100, 1000], "rtt_ms": 5},
    "profiling": {"repetitions": 5, "max_repetitions": 15},
    "codecs": ["raw", "fp16", "int8", "int8+zstd", "int8-static+zstd"],
    "calibration": {"max_samples": SAMPLES},
    "verification": {"max_samples": SAMPLES},
}
LITE = ImagePreprocess(scale=1.0, mean=[127.0, 127.0, 127.0], std=[128.0, 128.0, 128.0])


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    write_crops(folder, SAMPLES, seed=1)
    return folder


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compose_back(plan: Plan, folder: Path, inputs: list[dict[str, np.ndarray]]) -> int:
    """Run every split and offered codec on ``inputs``, and the codec inside the parts where the plan offers it;
    assert each within tolerance; count the checks."""
    full = _session(folder / plan.model.path)
    expected = [dict(zip([o.name for o in full.get_outputs()], full.run(None, x), strict=True)) for x in inputs]
    checks = 0
    for split in plan.splits:
        if split.kind == "edge-only":
            continue
        edge = _session(folder / split.edge_model) if split.edge_model and split.kind == "split" else None
        cloud = _session(folder / split.cloud_model) if split.cloud_model else None
        assert cloud is not None
        for result in split.codecs:
            if not result.verified:
                continue
            ways = [(edge, static_scales(result.scales), {})]
            if result.in_graph is not None and result.in_graph.verified:
                moved = dict.fromkeys(result.in_graph.tensors, "float32")
                ways.append(
                    (_session(folder / result.in_graph.edge_model), static_scales(result.in_graph.scales), moved)
                )
            for edge_part, scales, moved in ways:
                worst = _worst(split, edge_part, cloud, CodecSpec.parse(result.codec), scales, moved, inputs, expected)
                assert worst <= result.tolerance, (plan.model.name, split.id, result.codec, bool(moved), worst)
                checks += 1
    return checks


def _worst(
    split: SplitPlan,
    edge: ort.InferenceSession | None,
    cloud: ort.InferenceSession,
    spec: CodecSpec,
    scales: dict[str, StaticScales],
    moved: dict[str, str],
    inputs: list[dict[str, np.ndarray]],
    expected: list[dict[str, np.ndarray]],
) -> float:
    """The worst relative error of edge part -> wire -> float cloud part (as the hub runs it) over ``inputs``."""
    worst = 0.0
    for sample, want in zip(inputs, expected, strict=True):
        available = dict(sample)
        if edge is not None:
            names = [o.name for o in edge.get_outputs()]
            feed = {i.name: sample[i.name] for i in edge.get_inputs()}
            available.update(zip(names, edge.run(None, feed), strict=True))
        received = {}
        for tensor in split.crossing:
            header, frame = encode_tensor(
                tensor.name, available[tensor.name], spec, scales.get(tensor.name), prequantised=moved.get(tensor.name)
            )
            received[tensor.name] = decode_tensor(header, bytes(frame))
        got = dict(zip([o.name for o in cloud.get_outputs()], cloud.run(None, received), strict=True))
        got.update({name: available[name] for name in split.edge_outputs})
        for name, value in want.items():
            scale = float(np.max(np.abs(value))) or 1.0
            worst = max(worst, float(np.max(np.abs(got[name].astype(np.float64) - value))) / scale)
    return worst


def _images(name: str, height: int, width: int, pre: ImagePreprocess) -> list[dict[str, np.ndarray]]:
    return [{name: preprocess_image(crop, height, width, pre)} for crop in photo_crops(SAMPLES, seed=2)]


def _check_plan(plan: Plan) -> None:
    assert plan.data is not None and plan.data.source == "calibration" and plan.data.samples == SAMPLES
    assert any(split.kind == "split" for split in plan.splits), "no real cut was kept"
    for split in plan.splits:
        if split.kind == "edge-only":
            continue
        for result in split.codecs:
            assert result.samples == SAMPLES and result.fidelity is not None
            assert result.wire_bytes_p50 is not None and result.wire_bytes_p95 is not None
            assert result.max_error is not None
        assert split.codec("raw").verified


VISION: list[tuple[str, Callable[[Path], Path], str, int, dict, ImagePreprocess]] = [
    ("efficientnet_lite2", corpus.efficientnet_lite2, "image", 160, {"dims": {"height": 160, "width": 160}}, LITE),
    ("yolo_style", corpus.yolo_style, "images", 160, {"shapes": {"images": [1, 3, 160, 160]}}, ImagePreprocess()),
    ("deeplabv3", corpus.deeplabv3, "image", 96, {"dims": {"height": 96, "width": 96}}, ImagePreprocess()),
]


@pytest.mark.parametrize(("name", "export", "input_name", "side", "shapes", "pre"), VISION, ids=[v[0] for v in VISION])
def test_a_dynamic_vision_model_partitions_and_composes_back_on_real_photos(
    name: str,
    export: Callable[[Path], Path],
    input_name: str,
    side: int,
    shapes: dict,
    pre: ImagePreprocess,
    crops: Path,
    tmp_path: Path,
) -> None:
    model = export(tmp_path / f"{name}.onnx")
    with pytest.raises(MissingInputShape, match=rf"input '{input_name}' \[1, 3, 'height', 'width'\]: dim 2 'height'"):
        partition(str(model), tmp_path / "no-shapes", PartitionConfig.model_validate(BASE), progress=False)
    assert not (tmp_path / "no-shapes").exists()
    config = PartitionConfig.model_validate(
        BASE | {"inputs": shapes, "calibration": BASE["calibration"] | {"preprocess": pre.model_dump()}}
    )
    plan = partition(str(model), tmp_path / "plan", config, calibration=crops, progress=False)
    _check_plan(plan)
    assert plan.model.inputs[0].shape == [1, 3, side, side]
    assert plan.model.inputs[0].declared == [1, 3, "height", "width"]
    assert plan.data is not None and plan.data.preprocess is not None and plan.data.preprocess["height"] == side
    for split in plan.splits:  # the exported parts keep the model's open axes
        if split.kind == "split" and split.edge_model:
            edge_input = _session(tmp_path / "plan" / split.edge_model).get_inputs()[0]
            assert edge_input.shape[2:] == ["height", "width"], edge_input.shape
    assert _compose_back(load_plan(tmp_path / "plan"), tmp_path / "plan", _images(input_name, side, side, pre)) > 4
    in_graph = [c.in_graph for s in plan.splits for c in s.codecs if c.in_graph is not None]
    assert any(pair.verified for pair in in_graph), "no cut offers the codec inside its parts"
    if name == "efficientnet_lite2":  # real weights: class agreement is a real figure, and fp16 keeps every class
        for split in (s for s in plan.splits if s.kind != "edge-only"):
            fidelity = split.codec("fp16").fidelity
            assert fidelity is not None and fidelity.kind == "classes" and fidelity.value == 1.0


def _tones(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(512) / 16000
    audio = [
        0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(512) for _ in range(count)
    ]
    return {
        "input": np.stack(audio).astype(np.float32)[:, None],
        "state": np.zeros((count, 2, 1, 128), np.float32),
        "sr": np.full((count,), 16000, np.int64),
    }


def test_silero_vad_is_refused_without_sizes_and_partitions_with_them(tmp_path: Path) -> None:
    model = corpus.silero_vad(tmp_path / "silero_vad.onnx")
    with pytest.raises(MissingInputShape) as caught:
        partition(str(model), tmp_path / "no-shapes", PartitionConfig.model_validate(BASE), progress=False)
    assert "input 'input' [?, ?]: dim 1 (unnamed) unknown; give --input-shape input=1x<size>" in str(caught.value)
    assert "input 'state' [2, ?, 128]: dim 1 (unnamed) unknown" in str(caught.value)
    np.savez(tmp_path / "vad.npz", **_tones(SAMPLES, 1))
    config = PartitionConfig.model_validate(BASE)
    plan = partition(str(model), tmp_path / "plan", config, calibration=tmp_path / "vad.npz", progress=False)
    assert plan.data is not None and plan.data.samples == SAMPLES
    cloud_only = plan.split("cloud-only")
    assert {t.name for t in cloud_only.crossing} == {"input", "state", "sr"}
    assert any("'sr' int64 []" in f for f in cloud_only.codec("int8").fallbacks)  # the scalar rate travels raw
    other = _tones(SAMPLES, 2)
    inputs = [{k: np.array(v[i]) for k, v in other.items()} for i in range(SAMPLES)]  # sr: a 0-d int64
    assert _compose_back(load_plan(tmp_path / "plan"), tmp_path / "plan", inputs) >= 1
