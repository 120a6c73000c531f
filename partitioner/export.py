"""Sub-model export and verification: edge.onnx and cloud.onnx per split, and cloud(edge(x)) == full(x).

For a split ``S`` the edge model runs from the graph inputs the edge reads to
the crossing activations made on the edge plus the graph outputs computed
there; the cloud model runs from every crossing tensor (graph inputs it reads
included) to the remaining graph outputs. Both come from
:class:`onnx.utils.Extractor` on the analysed model, which copies each
part's weights and constant nodes into it. Edge-only and cloud-only splits
reuse the full model (``model.onnx``) instead of a copy.

:func:`verify_split` runs the parts with ONNX Runtime on the sample inputs,
sends the crossing tensors through each codec
(:func:`tandem.transport.codec.encode_tensor` then ``decode_tensor``) and compares
the merged outputs with the full model's. The error is
``max |got - full| / max |full|`` over outputs and samples; ``raw`` must be
within the raw tolerance (anything else is a bug and raises), lossy codecs
are recorded with their error and pass or fail their own tolerance.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnx.utils

from tandem.contracts.plan import Fidelity
from tandem.partitioner.errors import PartitionError
from tandem.partitioner.fidelity import score
from tandem.partitioner.graph import ModelGraph
from tandem.partitioner.profiling import OrtModel
from tandem.transport.codec import CodecSpec, StaticScales, decode_tensor, encode_tensor

__all__ = [
    "FULL_MODEL",
    "CodecCheck",
    "CodecScales",
    "SplitParts",
    "VerificationError",
    "check_split",
    "relative_error",
    "run_split",
    "send",
    "verify_split",
    "write_full_model",
    "write_split",
]

FULL_MODEL = "model.onnx"

CodecScales = Mapping[str, Mapping[str, StaticScales]]
"""Calibrated scales of the ``int8-static`` codecs: codec text -> tensor name -> scales."""


class VerificationError(PartitionError):
    """cloud(edge(x)) differs from the full model beyond the raw tolerance: the split is wrong."""


@dataclass(frozen=True)
class SplitParts:
    """One split's sub-models (paths relative to the plan folder; None when that side runs nothing)."""

    split_id: str
    edge_nodes: frozenset[str]
    edge_model: str | None
    cloud_model: str | None
    edge_inputs: tuple[str, ...]
    edge_model_outputs: tuple[str, ...]
    crossing: tuple[str, ...]
    edge_outputs: tuple[str, ...]
    cloud_outputs: tuple[str, ...]


def write_full_model(graph: ModelGraph, out_dir: Path) -> Path:
    """Copy the model into the plan folder as ``model.onnx`` (the edge's fallback and the one-sided splits')."""
    target = out_dir / FULL_MODEL
    out_dir.mkdir(parents=True, exist_ok=True)
    if target.exists() and target.resolve() == graph.path.resolve():
        return target
    if graph.external_data:
        onnx.save(graph.model, str(target))
    else:
        shutil.copyfile(graph.path, target)
    return target


def write_split(
    graph: ModelGraph,
    split_id: str,
    edge_nodes: frozenset[str],
    out_dir: Path,
    extractor: onnx.utils.Extractor | None = None,
) -> SplitParts:
    """Write ``splits/<id>/edge.onnx`` and ``cloud.onnx`` for a split (checked by onnx.checker)."""
    everything = graph.all_nodes
    crossing = graph.crossing(edge_nodes)
    parts = SplitParts(
        split_id=split_id,
        edge_nodes=edge_nodes,
        edge_model=FULL_MODEL if edge_nodes == everything else None,
        cloud_model=FULL_MODEL if not edge_nodes else None,
        edge_inputs=graph.edge_inputs(edge_nodes),
        edge_model_outputs=graph.edge_model_outputs(edge_nodes),
        crossing=crossing,
        edge_outputs=graph.edge_outputs(edge_nodes),
        cloud_outputs=graph.cloud_outputs(edge_nodes),
    )
    if edge_nodes in (frozenset(), everything):
        return parts
    extractor = extractor or onnx.utils.Extractor(graph.model)
    folder = out_dir / "splits" / split_id
    folder.mkdir(parents=True, exist_ok=True)
    edge_path, cloud_path = folder / "edge.onnx", folder / "cloud.onnx"
    _extract(
        extractor,
        graph,
        list(parts.edge_inputs),
        list(parts.edge_model_outputs),
        edge_path,
        f"{graph.name} edge part {split_id}",
    )
    _extract(
        extractor, graph, list(crossing), list(parts.cloud_outputs), cloud_path, f"{graph.name} cloud part {split_id}"
    )
    relative = f"splits/{split_id}"
    return replace(parts, edge_model=f"{relative}/edge.onnx", cloud_model=f"{relative}/cloud.onnx")


def _extract(
    extractor: onnx.utils.Extractor, graph: ModelGraph, inputs: list[str], outputs: list[str], path: Path, title: str
) -> None:
    try:
        part = extractor.extract_model(inputs, outputs)
    except (ValueError, KeyError) as exc:
        raise PartitionError(f"model {graph.name!r}: cannot extract {title} ({inputs} -> {outputs}): {exc}") from exc
    part.graph.name = title
    part.graph.doc_string = f"Extracted by Tandem from {graph.path.name} (sha256 {graph.sha256})"
    onnx.save(part, str(path))
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise PartitionError(f"{path}: the extracted {title} is not a valid ONNX model: {exc}") from exc


def relative_error(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> float:
    """``max |got - want| / max |want|`` over all outputs (absolute when ``want`` is all zeros)."""
    worst = 0.0
    for name, expected in want.items():
        if name not in got:
            raise VerificationError(f"output {name!r} is missing from the split's result")
        expected64 = np.asarray(expected, np.float64)
        actual64 = np.asarray(got[name], np.float64)
        if actual64.shape != expected64.shape:
            raise VerificationError(f"output {name!r}: shape {actual64.shape}, the full model gives {expected64.shape}")
        if expected64.size == 0:
            continue
        scale = float(np.max(np.abs(expected64)))
        error = float(np.max(np.abs(actual64 - expected64)))
        worst = max(worst, error / scale if scale > 0 else error)
    return worst


def send(
    tensors: Mapping[str, np.ndarray], names: Sequence[str], codec: str, scales: CodecScales | None = None
) -> dict[str, np.ndarray]:
    """The named tensors as the cloud receives them: encoded with ``codec`` (``int8-static``: with the
    tensors' calibrated ``scales[codec]``) and decoded."""
    spec = CodecSpec.parse(codec)
    static = (scales or {}).get(codec, {})
    received = {}
    for name in names:
        header, frame = encode_tensor(name, tensors[name], spec, static.get(name))
        received[name] = decode_tensor(header, bytes(frame))
    return received


def run_split(
    parts: SplitParts,
    edge: OrtModel | None,
    cloud: OrtModel | None,
    inputs: Mapping[str, np.ndarray],
    codec: str,
    scales: CodecScales | None = None,
) -> dict[str, np.ndarray]:
    """The graph outputs for ``inputs``: edge part, codec round trip of the crossing tensors, cloud part."""
    available = dict(inputs)
    if edge is not None:
        available.update(edge.run(available))
    result = {name: available[name] for name in parts.edge_outputs}
    if cloud is not None:
        result.update(cloud.run(send(available, parts.crossing, codec, scales)))
    return result


def verify_split(
    parts: SplitParts,
    out_dir: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    expected: Sequence[Mapping[str, np.ndarray]],
    codecs: Sequence[str],
    raw_tolerance: float,
    threads: int = 1,
    scales: CodecScales | None = None,
) -> dict[str, float]:
    """The relative error of each codec (``raw`` always included) over the samples; raw beyond tolerance raises.

    :func:`check_split` without fidelity: the worst error per codec only.
    """
    checks = check_split(parts, out_dir, samples, expected, codecs, raw_tolerance, threads=threads, scales=scales)
    return {codec: check.max_error for codec, check in checks.items()}


@dataclass(frozen=True)
class CodecCheck:
    """One codec on one split over the samples: worst relative error, which sample gave it, and fidelity."""

    max_error: float
    worst_sample: int
    samples: int
    fidelity: Fidelity | None


def check_split(
    parts: SplitParts,
    out_dir: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    expected: Sequence[Mapping[str, np.ndarray]],
    codecs: Sequence[str],
    raw_tolerance: float,
    *,
    threads: int = 1,
    output: str | None = None,
    kind: str = "other",
    scales: CodecScales | None = None,
) -> dict[str, CodecCheck]:
    """Every codec (``raw`` included) on every sample: the edge part runs once per sample, the cloud per codec.

    ``output`` (a graph output) is scored for fidelity as ``kind`` (see :mod:`tandem.partitioner.fidelity`).
    Raw beyond ``raw_tolerance`` raises :class:`VerificationError`: the split itself is wrong.
    """
    edge = OrtModel(out_dir / parts.edge_model, threads=threads) if parts.edge_model else None
    cloud = OrtModel(out_dir / parts.cloud_model, threads=threads) if parts.cloud_model else None
    names = list(dict.fromkeys(["raw", *codecs]))
    worst = {codec: (0.0, 0) for codec in names}
    got: dict[str, list[np.ndarray]] = {codec: [] for codec in names}
    for index, (sample, want) in enumerate(zip(samples, expected, strict=True)):
        available = dict(sample)
        if edge is not None:
            available.update(edge.run(available))
        for codec in names:
            result = {name: available[name] for name in parts.edge_outputs}
            if cloud is not None:
                result.update(cloud.run(send(available, parts.crossing, codec, scales)))
            error = relative_error(result, want)
            if error > worst[codec][0]:
                worst[codec] = (error, index)
            if output is not None:
                got[codec].append(result[output])
    if worst["raw"][0] > raw_tolerance:
        raise VerificationError(
            f"split {parts.split_id!r}: cloud(edge(x)) differs from the full model by {worst['raw'][0]:.3g} "
            f"(relative, sample {worst['raw'][1]}) with the raw codec, over the tolerance {raw_tolerance:g}; "
            f"crossing tensors: {list(parts.crossing)}"
        )
    reference = [want[output] for want in expected] if output is not None else []
    return {
        codec: CodecCheck(
            max_error=worst[codec][0],
            worst_sample=worst[codec][1],
            samples=len(samples),
            fidelity=score(kind, output, got[codec], reference) if output is not None else None,
        )
        for codec in names
    }
