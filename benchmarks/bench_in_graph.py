"""The codec inside the parts against the message codec: edge part + host codec time per request, bytes, error.

MobileNetV2 (torchvision definition, random weights) is partitioned once per cut with ``--cut`` (its
default plan keeps no cut: cloud-only and edge-only only) on 16 photo crops, codecs raw, fp16+lz4,
int8+zstd and int8-static+zstd. Then, on 48 other crops, each cut runs:

- message codec: the plain edge part, then the host encodes its output (``encode_tensor``);
- in the graph: the edge part that ends in Clip+Cast / QuantizeLinear, whose output goes on the wire as is.

Per request: edge part + host codec time (p50, ms), wire bytes (p50) and the worst relative error of the
answer against the unsplit model, both variants side by side in the same run and process, taking turns
in rounds (each runs its samples back to back, as an edge serving one split does). On this CPU
the edge part runs in ONNX Runtime, so the quantiser costs about what NumPy's does; on a Jetson,
TensorRT computes it on the GPU and copies 2-4x fewer bytes to the host, which no CPU run shows.
EfficientNet-Lite2's kept cuts are in the fidelity benchmark (``edge_plus_codec_ms_p50``).

``quick``: one cut, 12 crops.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tandem.edge_agent.plan_view import static_scales
from tandem.models.photos import photo_crops, write_crops
from tandem.partitioner.calibration import preprocess_image
from tandem.partitioner.config import ImagePreprocess, PartitionConfig
from tandem.partitioner.export import relative_error
from tandem.partitioner.pipeline import partition
from tandem.partitioner.profiling import OrtModel
from tandem.transport.codec import CodecSpec, StaticScales, decode_tensor, encode_tensor

CUTS = [
    "/features/features.3/Add_output_0",
    "/features/features.6/Add_output_0",
    "/features/features.13/Add_output_0",
]
CODECS = ["raw", "fp16+lz4", "int8+zstd", "int8-static+zstd"]
ROUNDS = 3
PREPROCESS = ImagePreprocess(scale=1 / 255, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
CONFIG = {
    "edge": {"source": "spec"},
    "cloud": {"source": "spec"},
    "codecs": CODECS,
    "calibration": {"max_samples": 16, "preprocess": PREPROCESS.model_dump()},
    "verification": {"max_samples": 16},
}


@dataclass
class _Variant:
    """One way to run the edge side of a cut: which edge part, and how its output goes on the wire."""

    edge: OrtModel
    spec: CodecSpec
    scales: dict[str, StaticScales]
    moved: dict[str, str]  # tensors the edge part already quantised, with the dtype they decode to
    times: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    worst: float = 0.0

    def figures(self) -> dict[str, float]:
        return {
            "edge_plus_codec_ms_p50": round(1e3 * float(np.median(self.times)), 3),
            "wire_bytes_p50": float(np.median(self.sizes)),
            "max_error": self.worst,
        }


def _serve(variants: list[_Variant], cloud: OrtModel, crossing: list[str], inputs: list, full: list) -> None:
    """Every variant on every sample, in rounds of one variant over all samples, the variants taking turns.

    A variant runs its samples back to back (its session's weights stay in the caches, as on an edge that
    serves one split), and the turns spread a busy host's noise over all variants alike.
    """
    for _ in range(ROUNDS):
        for variant in variants:
            _serve_one(variant, cloud, crossing, inputs, full)


def _serve_one(variant: _Variant, cloud: OrtModel, crossing: list[str], inputs: list, full: list) -> None:
    """Edge side of every sample back to back (timed), then the cloud side of each (for the error)."""
    sent = []
    for sample in inputs:
        start = time.perf_counter()
        available = {**sample, **variant.edge.run(sample)}
        frames = [
            encode_tensor(
                name, available[name], variant.spec, variant.scales.get(name), prequantised=variant.moved.get(name)
            )
            for name in crossing
        ]
        variant.times.append(time.perf_counter() - start)
        variant.sizes.append(sum(header.nbytes for header, _ in frames))
        sent.append(frames)
    for frames, want in zip(sent, full, strict=True):
        received = {header.name: decode_tensor(header, bytes(frame)) for header, frame in frames}
        variant.worst = max(variant.worst, relative_error(cloud.run(received), want))


def _cut_rows(folder: Path, cut: str, calibration: Path, inputs: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    out = folder / f"plan-{cut.strip('/').replace('/', '_')}"
    plan = partition("mobilenet_v2", out, PartitionConfig.model_validate(CONFIG), cut=[cut], calibration=calibration,
                     progress=False)  # fmt: skip
    split = next(s for s in plan.splits if s.kind == "split")
    full_model = OrtModel(out / plan.model.path)
    full = [full_model.run(sample) for sample in inputs]
    plain_edge, cloud = OrtModel(out / str(split.edge_model)), OrtModel(out / str(split.cloud_model))
    crossing = [t.name for t in split.crossing]
    variants: dict[tuple[str, str], _Variant] = {}
    for result in split.codecs:
        spec = CodecSpec.parse(result.codec)
        variants[(result.codec, "message")] = _Variant(plain_edge, spec, static_scales(result.scales), {})
        if result.in_graph is not None:
            pair = result.in_graph
            edge = OrtModel(out / pair.edge_model)
            variants[(result.codec, "in_graph")] = _Variant(
                edge, spec, static_scales(pair.scales), dict.fromkeys(pair.tensors, "float32")
            )
    _serve(list(variants.values()), cloud, crossing, inputs, full)
    rows: dict[str, Any] = {}
    for (codec, how), variant in variants.items():
        result = split.codec(codec)
        in_graph = result.in_graph if how == "in_graph" else None
        plan_error = in_graph.max_error if in_graph is not None else result.max_error
        rows.setdefault(codec, {})[how] = variant.figures() | {"plan_max_error": plan_error}
    return {"cut": cut, "crossing": crossing, "edge_nodes": split.edge_nodes, "codecs": rows}


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Partition MobileNetV2 at each cut and time message codec vs codec in the graph, side by side."""
    cuts, count = (CUTS[:1], 12) if quick else (CUTS, 48)
    with tempfile.TemporaryDirectory(prefix="tandem-bench-in-graph-") as work:
        folder = Path(work)
        write_crops(folder / "calibration", 16, seed=1)
        inputs = [{"input": preprocess_image(crop, 224, 224, PREPROCESS)} for crop in photo_crops(count, seed=7)]
        rows = [_cut_rows(folder, cut, folder / "calibration", inputs) for cut in cuts]
    return {
        "model": "MobileNetV2, torchvision definition, random weights (timing and bytes; errors vs the unsplit model)",
        "input": [1, 3, 224, 224],
        "crops": count,
        "calibration_crops": 16,
        "executor": "ONNX Runtime CPU (1 thread per session), this host",
        "cuts": rows,
    }
