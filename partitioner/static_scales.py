"""Calibrated int8 scales (the ``int8-static`` codecs): each crossing tensor's range over the calibration set.

The per-message int8 codec takes every message's own min and max; ``int8-static``
takes them once, over the calibration samples, and the plan records them per
split and crossing tensor (``CodecResult.scales``). Where the set covers the
inputs the edge will see, static scales cost nothing per message, let an
exported edge part end in ``QuantizeLinear`` (see
:mod:`tandem.partitioner.in_graph`), and for a tensor whose values lie on a
grid (an image's pixels) reproduce that grid exactly. A message reaching
beyond the calibrated range gets scales widened to cover it, for that message
(:func:`tandem.transport.codec.encode_tensor`): drift costs resolution, never
saturation. Only the codec inside the parts (a ``QuantizeLinear`` with fixed
scales) saturates there.

Where every reader of a tensor saturates it anyway (``Relu``, ``Clip`` with
constant bounds: a conv output before its ReLU6), the range is cut to what
the readers let through (:func:`saturating_bounds`): values beyond it give
the same result after the reader, so the levels go where they matter. A
pre-activation tensor spanning [-30, 40] ahead of a ReLU6 is quantised over
[0, 6], a step 12x finer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from tandem.partitioner.graph import ModelGraph
from tandem.transport.codec import CodecSpec, StaticScales, channel_axis

__all__ = ["Bounds", "calibrate_scales", "saturating_bounds", "static_axes"]

Bounds = tuple[float | None, float | None]
"""The values a tensor's readers let through: (low, high), None for unbounded."""


def static_axes(codecs: Sequence[str]) -> dict[str, int | None]:
    """The ``int8-static`` codecs among ``codecs``, each with its channel axis (None: one scale per tensor)."""
    found = {}
    for text in codecs:
        spec = CodecSpec.parse(text)
        if spec.static:
            found[str(spec)] = spec.axis
    return found


def saturating_bounds(graph: ModelGraph, names: Iterable[str]) -> dict[str, Bounds]:
    """For each tensor in ``names`` whose every reader is a ``Relu`` or a ``Clip`` with constant bounds (and
    which is not a graph output): the widest range those readers let through."""
    nodes = {node.name: node for node in graph.model.graph.node}
    constants = {init.name: numpy_helper.to_array(init) for init in graph.model.graph.initializer}
    for node in graph.model.graph.node:  # exporters write Clip bounds as Constant nodes
        if node.op_type == "Constant" and node.output:
            value = _constant_value(node)
            if value is not None:
                constants[node.output[0]] = value
    found = {}
    for name in names:
        tensor = graph.tensors.get(name)
        if tensor is None or not tensor.consumers or name in graph.outputs:
            continue
        bounds = [_reader_bounds(nodes.get(reader), graph, constants) for reader in tensor.consumers]
        if any(b is None for b in bounds):
            continue
        lows = [b[0] for b in bounds if b is not None]
        highs = [b[1] for b in bounds if b is not None]
        low = None if any(v is None for v in lows) else min(v for v in lows if v is not None)
        high = None if any(v is None for v in highs) else max(v for v in highs if v is not None)
        if low is not None or high is not None:
            found[name] = (low, high)
    return found


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_float", "value_floats", "value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(attribute))
    return None


def _reader_bounds(
    node: onnx.NodeProto | None, graph: ModelGraph, constants: Mapping[str, np.ndarray]
) -> Bounds | None:
    if node is None:
        return None
    if node.op_type == "Relu":
        return (0.0, None)
    if node.op_type != "Clip":
        return None
    if graph.opset < 11:  # bounds are attributes
        attrs = {a.name: a.f for a in node.attribute}
        return (attrs.get("min"), attrs.get("max"))
    values: list[float | None] = []
    for index in (1, 2):
        source = node.input[index] if len(node.input) > index else ""
        if not source:
            values.append(None)
            continue
        value = constants.get(source)
        if value is None and source in graph.constants:
            value = graph.activations.get(source)
        if value is None or np.asarray(value).size != 1:
            return None  # a bound computed at run time: nothing to rely on
        values.append(float(np.asarray(value).reshape(())))
    return (values[0], values[1])


def calibrate_scales(
    samples: Iterable[Mapping[str, np.ndarray]],
    names: Sequence[str],
    axes: Iterable[int | None],
    bounds: Mapping[str, Bounds] | None = None,
) -> dict[int | None, dict[str, StaticScales]]:
    """Per channel axis asked for, the scales of every floating tensor in ``names`` over all ``samples``.

    A tensor without the axis (0-d, 1-d) or with too few values per channel gets one scale, as the per-message
    codec gives it (:func:`tandem.transport.codec.channel_axis`); a tensor that is
    not floating or never finite gets none (it travels raw). Non-finite samples of a tensor are left out of its
    range (that message falls back to raw when sent). ``bounds``: ranges a tensor's readers saturate to
    (:func:`saturating_bounds`); its calibrated range is cut to them.
    """
    bounds = bounds or {}
    wanted = list(dict.fromkeys(axes))
    low: dict[tuple[int | None, str], np.ndarray] = {}
    high: dict[tuple[int | None, str], np.ndarray] = {}
    resolved: dict[tuple[int | None, str], int | None] = {}
    for sample in samples:
        for name in names:
            array = np.asarray(sample[name])
            if array.dtype.kind != "f" or not array.size or not np.isfinite(array).all():
                continue
            for axis in wanted:
                key = (axis, name)
                resolved[key] = channel_axis(array.shape, axis)[0]
                lo, hi = _range(array, resolved[key])
                low[key] = lo if key not in low else np.minimum(low[key], lo)
                high[key] = hi if key not in high else np.maximum(high[key], hi)
    found: dict[int | None, dict[str, StaticScales]] = {axis: {} for axis in wanted}
    for (axis, name), lo in low.items():
        hi = high[(axis, name)]
        floor, ceiling = bounds.get(name, (None, None))
        if floor is not None:
            lo = np.maximum(lo, np.float32(floor))
        if ceiling is not None:
            hi = np.minimum(hi, np.float32(ceiling))
        found[axis][name] = StaticScales.from_range(lo, hi, resolved[(axis, name)], (floor, ceiling))
    return found


def _range(array: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    if axis is None:
        return np.asarray(array.min(), np.float32), np.asarray(array.max(), np.float32)
    others = tuple(i for i in range(array.ndim) if i != axis % array.ndim)
    return array.min(axis=others).astype(np.float32), array.max(axis=others).astype(np.float32)
