"""The codec inside the parts: an edge part that ends in the wire's cast or QuantizeLinear, a cloud part that
starts with the matching cast or DequantizeLinear.

For a split whose codec is ``fp16`` or ``int8-static`` (any compression), the
exported pair under ``splits/<id>/in-graph-<key>/`` moves the quantiser into
the graphs: the edge part's crossing outputs come out as float16 (after a
Clip to float16's range, as the host codec clips) or as int8 from a
``QuantizeLinear`` with the calibrated scales, and the cloud part takes them
as such. On a Jetson, TensorRT then computes the cast on the GPU and copies
2-4x fewer bytes to the host, and the agent puts those bytes on the wire with
no host codec pass (``encode_tensor(..., prequantised=...)``). The wire format
does not change: the header carries dtype float32, codec int8 and the scales.
The hub serves the in-graph cloud part as a variant of the split
(cloud_hub/plans.py) and takes a request into it as sent when its tensors
carry exactly those scales (or float16); any other form goes to the plain part.

int8 in the graph is *symmetric* (zero point 0, ``scale = max|range| / 127``,
from the same calibrated range): TensorRT's explicit quantization accepts
only zero points of 0 ("Non-zero zero point is not supported"), so the
per-message and host ``int8-static`` codecs (asymmetric, 255 levels) and
this one (254 levels around 0) are verified and recorded separately.

Only crossing tensors the edge part computes are moved (a model input that
crosses to the cloud is not the edge part's output), only float32 ones, and
not a tensor that is also a graph output kept on the edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tandem.partitioner.export import CodecCheck, SplitParts, relative_error
from tandem.partitioner.fidelity import score
from tandem.partitioner.profiling import OrtModel
from tandem.transport.codec import CodecSpec, StaticScales

__all__ = ["InGraphParts", "check_in_graph", "in_graph_key", "symmetric", "write_in_graph"]

_FP16_MAX = float(np.finfo(np.float16).max)
_MIN_OPSET = {"fp16": 11, "int8": 10, "int8-axis": 13}  # Clip's min/max inputs; Q/DQ; Q/DQ's axis attribute


@dataclass(frozen=True)
class InGraphParts:
    """One split's in-graph codec pair (paths relative to the plan folder) and what it quantises."""

    key: str
    edge_model: str
    cloud_model: str
    tensors: tuple[str, ...]
    scales: Mapping[str, StaticScales]
    """int8: each moved tensor's symmetric scales; empty for fp16."""


def in_graph_key(codec: str) -> str | None:
    """The in-graph variant a codec has (``fp16``, ``int8``, ``int8-axis1``), or None (raw, per-message int8)."""
    spec = CodecSpec.parse(codec)
    if spec.quantiser == "fp16":
        return "fp16"
    if spec.quantiser == "int8" and spec.static:
        return "int8" if spec.axis is None else f"int8-axis{spec.axis}".replace("-axis-", "-axis_m")
    return None


def symmetric(scales: StaticScales) -> StaticScales:
    """The zero-point-0 scales covering the same range as ``scales`` (TensorRT's Q/DQ takes no other)."""
    scale = np.asarray(scales.scale, np.float64)
    zero = np.asarray(scales.zero_point, np.float64)
    reach = np.maximum(np.abs((-128 - zero) * scale), np.abs((127 - zero) * scale))
    sym = np.maximum(reach / 127.0, np.finfo(np.float32).tiny).astype(np.float32)
    return StaticScales(tuple(float(s) for s in sym), (0,) * len(sym), scales.axis, scales.limits)


def write_in_graph(
    out_dir: Path,
    split_id: str,
    edge_model: str,
    cloud_model: str,
    candidates: Sequence[str],
    codec: str,
    scales: Mapping[str, StaticScales],
) -> InGraphParts | str:
    """Write the in-graph pair for ``codec``; return it, or why there is none.

    ``candidates``: the crossing tensors the edge part computes as float32 (the caller's choice, see the
    module docstring); ``scales``: their calibrated scales (int8-static).
    """
    key = in_graph_key(codec)
    if key is None:
        return f"{codec} has no in-graph form (only fp16 and int8-static do)"
    edge = onnx.load(str(out_dir / edge_model))
    cloud = onnx.load(str(out_dir / cloud_model))
    opset = min(_opset(edge), _opset(cloud))
    per_axis = key.startswith("int8-axis")
    need = _MIN_OPSET["fp16" if key == "fp16" else "int8-axis" if per_axis else "int8"]
    if opset < need:
        return f"opset {opset}: the in-graph {key} needs opset {need} or later"
    moved = [name for name in candidates if key == "fp16" or name in scales]
    if not moved:
        return "no float32 tensor the edge part computes crosses this cut"
    sym = {name: symmetric(scales[name]) for name in moved} if key != "fp16" else {}
    for name in moved:
        if key == "fp16":
            _end_in_fp16(edge.graph, name)
            _start_from(cloud.graph, name, TensorProto.FLOAT16, [helper.make_node("Cast", [name], [], to=1)])
        else:
            _end_in_quantize(edge.graph, name, sym[name])
            _start_from(cloud.graph, name, TensorProto.INT8, [_dequantize(cloud.graph, name, sym[name])])
    folder = Path("splits") / split_id / f"in-graph-{key}"
    (out_dir / folder).mkdir(parents=True, exist_ok=True)
    paths = (folder / "edge.onnx", folder / "cloud.onnx")
    for model, path, role in ((edge, paths[0], "edge"), (cloud, paths[1], "cloud")):
        model.graph.name = f"{model.graph.name} (in-graph {key}, {role})"
        onnx.checker.check_model(model)
        onnx.save(model, str(out_dir / path))
    return InGraphParts(key, paths[0].as_posix(), paths[1].as_posix(), tuple(moved), sym)


def _opset(model: onnx.ModelProto) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _rename_inside(graph: onnx.GraphProto, name: str, new: str, *, outputs: bool) -> None:
    """Point every node input (and, with ``outputs``, the producer's output and value_info) at ``new``."""
    for node in graph.node:
        node.input[:] = [new if value == name else value for value in node.input]
        if outputs:
            node.output[:] = [new if value == name else value for value in node.output]
    if outputs:
        for info in graph.value_info:
            if info.name == name:
                info.name = new


def _retype(values: Sequence[onnx.ValueInfoProto], name: str, elem_type: int) -> None:
    for info in values:
        if info.name == name:
            info.type.tensor_type.elem_type = elem_type
            return
    raise KeyError(name)


def _end_in_fp16(graph: onnx.GraphProto, name: str) -> None:
    inner, clipped = f"{name}::float", f"{name}::clipped"
    _rename_inside(graph, name, inner, outputs=True)
    low, high = f"{name}::fp16_min", f"{name}::fp16_max"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(-_FP16_MAX, np.float32), low),
            numpy_helper.from_array(np.array(_FP16_MAX, np.float32), high),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Clip", [inner, low, high], [clipped], name=f"{name}::clip_to_fp16"),
            helper.make_node("Cast", [clipped], [name], name=f"{name}::cast_to_fp16", to=TensorProto.FLOAT16),
        ]
    )
    _retype(graph.output, name, TensorProto.FLOAT16)


def _scale_initializers(graph: onnx.GraphProto, name: str, scales: StaticScales) -> tuple[str, str]:
    scale, zero = f"{name}::scale", f"{name}::zero_point"
    if scales.axis is None:
        values, zeros = np.array(scales.scale[0], np.float32), np.array(0, np.int8)
    else:
        values, zeros = np.asarray(scales.scale, np.float32), np.zeros(len(scales.scale), np.int8)
    graph.initializer.extend([numpy_helper.from_array(values, scale), numpy_helper.from_array(zeros, zero)])
    return scale, zero


def _with_axis(node: onnx.NodeProto, scales: StaticScales) -> onnx.NodeProto:
    if scales.axis is not None:
        node.attribute.append(helper.make_attribute("axis", scales.axis))
    return node


def _end_in_quantize(graph: onnx.GraphProto, name: str, scales: StaticScales) -> None:
    inner = f"{name}::float"
    _rename_inside(graph, name, inner, outputs=True)
    scale, zero = _scale_initializers(graph, name, scales)
    graph.node.append(
        _with_axis(helper.make_node("QuantizeLinear", [inner, scale, zero], [name], name=f"{name}::quantize"), scales)
    )
    _retype(graph.output, name, TensorProto.INT8)


def _dequantize(graph: onnx.GraphProto, name: str, scales: StaticScales) -> onnx.NodeProto:
    scale, zero = _scale_initializers(graph, name, scales)
    return _with_axis(helper.make_node("DequantizeLinear", [name, scale, zero], [], name=f"{name}::dequantize"), scales)


def _start_from(graph: onnx.GraphProto, name: str, elem_type: int, nodes: list[onnx.NodeProto]) -> None:
    """Retype graph input ``name`` and feed its consumers through ``nodes`` (whose last output is set here)."""
    inner = f"{name}::restored"
    _rename_inside(graph, name, inner, outputs=False)
    nodes[-1].output[:] = [inner]
    if not nodes[-1].name:
        nodes[-1].name = f"{name}::restore"
    for index, node in enumerate(nodes):
        graph.node.insert(index, node)
    _retype(graph.input, name, elem_type)


def check_in_graph(
    parts: SplitParts,
    pair: InGraphParts,
    out_dir: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    expected: Sequence[Mapping[str, np.ndarray]],
    *,
    threads: int = 1,
    output: str | None = None,
    kind: str = "other",
) -> CodecCheck:
    """The in-graph pair on every sample against the full model: worst relative error and fidelity.

    The edge part's int8/float16 outputs go to the cloud part unchanged, as the wire carries them (compression
    is lossless).
    """
    edge = OrtModel(out_dir / pair.edge_model, threads=threads)
    cloud = OrtModel(out_dir / pair.cloud_model, threads=threads)
    worst, worst_index, got = 0.0, 0, []
    for index, (sample, want) in enumerate(zip(samples, expected, strict=True)):
        available = {**sample, **edge.run(sample)}
        result = {name: available[name] for name in parts.edge_outputs} | cloud.run(available)
        error = relative_error(result, want)
        if error > worst:
            worst, worst_index = error, index
        if output is not None:
            got.append(result[output])
    reference = [want[output] for want in expected] if output is not None else []
    return CodecCheck(
        max_error=worst,
        worst_sample=worst_index,
        samples=len(samples),
        fidelity=score(kind, output, got, reference) if output is not None else None,
    )
