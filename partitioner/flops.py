"""Per-node FLOPs and bytes moved for an ONNX graph, from static shapes.

Conventions (the unit tests check them by hand):

- One multiply-add is 2 FLOPs. Conv, ConvTranspose, Gemm and MatMul count
  ``2 * MACs`` plus one FLOP per output element for a bias.
- Elementwise ops count one FLOP per output element, whatever the function
  (transcendentals included: on GPUs these ops are memory bound, so the exact
  count hardly matters); variadic ``Sum``/``Max``/``Min``/``Mean`` count
  ``inputs - 1`` per element.
- Pooling counts one FLOP per window element per output; global pooling and
  reductions one per input element (two for ``ReduceSumSquare``/``ReduceL2``/
  ``ReduceLogSumExp``).
- Normalisations count a fixed number per element: BatchNormalization 2
  (folded to scale and shift at inference), Softmax/LogSoftmax 5 (max,
  subtract, exp, sum, divide), LayerNormalization/InstanceNormalization/
  GroupNormalization 8 (mean, subtract, square, sum, rsqrt, multiply, scale,
  shift).
- Every other op counts 0 FLOPs and only its bytes.
- Bytes moved are the sizes of all inputs, outputs and weights (initializers)
  in their ONNX dtypes. View and metadata ops (Reshape, Shape, Constant, ...)
  move nothing and launch no kernel: TensorRT folds them away.
- Elementwise and variadic ops are marked ``fusible``: TensorRT fuses them
  into a neighbouring kernel, so a cost model should not charge them a kernel
  launch of their own (their bytes are still counted, an upper bound).

Only the top-level graph is counted; ops inside If/Loop bodies are not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, shape_inference

from tandem.partitioner.errors import PartitionError

__all__ = ["NodeCost", "count_node_costs", "ensure_node_names", "total_flops"]

# Ops that only rewrite shape metadata or produce constants: no kernel, no traffic.
NO_KERNEL_OPS = frozenset(
    {"Constant", "Shape", "Size", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
)
_ELEMENTWISE_OPS = frozenset(
    {
        "Abs", "Acos", "Acosh", "Add", "And", "Asin", "Asinh", "Atan", "Atanh", "BitShift", "Cast", "Ceil",
        "Celu", "Clip", "Cos", "Cosh", "Div", "Elu", "Equal", "Erf", "Exp", "Floor", "Gelu", "Greater",
        "GreaterOrEqual", "HardSigmoid", "HardSwish", "IsInf", "IsNaN", "LeakyRelu", "Less", "LessOrEqual", "Log",
        "Mish", "Mod", "Mul", "Neg", "Not", "Or", "PRelu", "Pow", "Reciprocal", "Relu", "Round", "Selu",
        "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softplus", "Softsign", "Sqrt", "Sub", "Tan", "Tanh",
        "ThresholdedRelu", "Where", "Xor",
    }
)  # fmt: skip
_VARIADIC_OPS = frozenset({"Sum", "Max", "Min", "Mean"})
_POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_GLOBAL_POOL_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_REDUCE_OPS = {
    "ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1, "ReduceL1": 1,
    "ReduceLogSum": 1, "ArgMax": 1, "ArgMin": 1, "ReduceSumSquare": 2, "ReduceL2": 2, "ReduceLogSumExp": 2,
}  # fmt: skip
_PER_ELEMENT_OPS = {
    "BatchNormalization": 2, "Softmax": 5, "LogSoftmax": 5, "LayerNormalization": 8,
    "InstanceNormalization": 8, "GroupNormalization": 8,
}  # fmt: skip
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.BFLOAT16})  # fmt: skip


@dataclass(frozen=True)
class NodeCost:
    """What one node computes and moves, as counted from static shapes.

    ``float_bytes``/``float_elements`` are the part of ``bytes_moved`` held in
    floating tensors, so a cost model can re-price them at another precision.
    ``shapes_known`` is False when shape inference left a tensor of this node
    without a static shape; its counts are then lower bounds. ``fusible``
    marks elementwise ops that TensorRT folds into a neighbouring kernel.
    """

    name: str
    op_type: str
    flops: int
    input_bytes: int
    output_bytes: int
    weight_bytes: int
    float_bytes: int
    float_elements: int
    launches_kernel: bool = True
    shapes_known: bool = True
    fusible: bool = False

    @property
    def bytes_moved(self) -> int:
        """Inputs + outputs + weights, in bytes of their ONNX dtypes."""
        return self.input_bytes + self.output_bytes + self.weight_bytes


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every top-level node a unique, stable name, in place; return ``model``.

    An unnamed node at position ``i`` becomes ``f"{op_type}_{i}"``; a name that
    repeats an earlier one gets ``f"_{i}"`` appended. The rule depends only on
    the graph, so two tools that call this on the same file agree.
    """
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)
    return model


def count_node_costs(model: onnx.ModelProto) -> dict[str, NodeCost]:
    """FLOPs and bytes for every top-level node, keyed by node name, in graph order.

    Runs ONNX shape inference on a copy; unnamed nodes are named as
    :func:`ensure_node_names` does (the caller's model is left unchanged).
    """
    work = onnx.ModelProto()
    work.CopyFrom(model)
    ensure_node_names(work)
    try:
        inferred = shape_inference.infer_shapes(work, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise PartitionError(f"model {model.graph.name!r}: ONNX shape inference failed: {exc}") from exc
    tensors = _tensor_types(inferred.graph)
    weights = {init.name for init in inferred.graph.initializer}
    return {node.name: _node_cost(node, tensors, weights) for node in inferred.graph.node}


def total_flops(costs: dict[str, NodeCost]) -> int:
    """Sum of FLOPs over ``costs``."""
    return sum(cost.flops for cost in costs.values())


# --- shapes -----------------------------------------------------------------------------------------------------------

_TensorType = tuple[int, tuple[int, ...] | None]  # (ONNX elem_type, static shape or None)


def _tensor_types(graph: onnx.GraphProto) -> dict[str, _TensorType]:
    types: dict[str, _TensorType] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = info.type.tensor_type
        if not info.type.HasField("tensor_type"):
            continue
        shape: tuple[int, ...] | None = None
        if tensor_type.HasField("shape"):
            dims = tensor_type.shape.dim
            if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
                shape = tuple(int(d.dim_value) for d in dims)
        types[info.name] = (tensor_type.elem_type, shape)
    for init in graph.initializer:
        types[init.name] = (init.data_type, tuple(int(d) for d in init.dims))
    return types


def _itemsize(elem_type: int) -> int:
    if elem_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
        return 0
    return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)


def _node_cost(node: onnx.NodeProto, tensors: dict[str, _TensorType], weights: set[str]) -> NodeCost:
    if node.op_type in NO_KERNEL_OPS:
        return NodeCost(node.name, node.op_type, 0, 0, 0, 0, 0, 0, launches_kernel=False)
    known = True
    sizes = {"input": 0, "output": 0, "weight": 0}
    float_bytes = float_elements = 0
    roles = [("weight" if name in weights else "input", name) for name in node.input if name]
    roles += [("output", name) for name in node.output if name]
    for role, name in roles:
        elem_type, shape = tensors.get(name, (onnx.TensorProto.UNDEFINED, None))
        if shape is None:
            known = False
            continue
        elements = math.prod(shape)
        nbytes = elements * _itemsize(elem_type)
        sizes[role] += nbytes
        if elem_type in _FLOAT_TYPES:
            float_bytes += nbytes
            float_elements += elements
    shapes = [tensors.get(name, (0, None))[1] if name else None for name in node.input]
    out_shapes = [tensors.get(name, (0, None))[1] for name in node.output]
    flops = _flops(node, shapes, out_shapes)
    if flops is None:
        known, flops = False, 0
    return NodeCost(
        name=node.name,
        op_type=node.op_type,
        flops=flops,
        input_bytes=sizes["input"],
        output_bytes=sizes["output"],
        weight_bytes=sizes["weight"],
        float_bytes=float_bytes,
        float_elements=float_elements,
        shapes_known=known,
        fusible=node.op_type in _ELEMENTWISE_OPS or node.op_type in _VARIADIC_OPS,
    )


# --- FLOPs ------------------------------------------------------------------------------------------------------------

_Shape = tuple[int, ...] | None


def _flops(node: onnx.NodeProto, ins: Sequence[_Shape], outs: Sequence[_Shape]) -> int | None:
    """FLOPs of ``node``, or None when a shape it needs is unknown."""
    op = node.op_type
    out = outs[0] if outs else None
    if op == "Conv":
        return _conv_flops(ins, out)
    if op == "ConvTranspose":
        return _conv_transpose_flops(ins, out)
    if op == "Gemm":
        return _gemm_flops(node, ins, out)
    if op == "MatMul":
        if out is None or not ins or ins[0] is None or not ins[0]:
            return None
        return 2 * math.prod(out) * ins[0][-1]
    if op in _ELEMENTWISE_OPS:
        return None if out is None else math.prod(out)
    if op in _VARIADIC_OPS:
        return None if out is None else math.prod(out) * max(len(node.input) - 1, 0)
    if op in _POOL_OPS:
        kernel = _attr_ints(node, "kernel_shape")
        return None if out is None else math.prod(out) * math.prod(kernel)
    if op in _GLOBAL_POOL_OPS:
        return None if not ins or ins[0] is None else math.prod(ins[0])
    if op in _REDUCE_OPS:
        return None if not ins or ins[0] is None else math.prod(ins[0]) * _REDUCE_OPS[op]
    if op in _PER_ELEMENT_OPS:
        return None if not ins or ins[0] is None else math.prod(ins[0]) * _PER_ELEMENT_OPS[op]
    return 0


def _conv_flops(ins: Sequence[_Shape], out: _Shape) -> int | None:
    if out is None or len(ins) < 2 or ins[1] is None:
        return None
    weight = ins[1]  # [M, C/group, k...]
    macs_per_output = math.prod(weight[1:])
    bias = math.prod(out) if len(ins) > 2 and ins[2] is not None else 0
    return 2 * math.prod(out) * macs_per_output + bias


def _conv_transpose_flops(ins: Sequence[_Shape], out: _Shape) -> int | None:
    if out is None or len(ins) < 2 or ins[0] is None or ins[1] is None:
        return None
    x, weight = ins[0], ins[1]  # x [N, C, spatial...], weight [C, M/group, k...]
    # every input element is multiplied into a (M/group x kernel) patch of the output
    macs = math.prod(x) * math.prod(weight[1:])
    bias = math.prod(out) if len(ins) > 2 and ins[2] is not None else 0
    return 2 * macs + bias


def _gemm_flops(node: onnx.NodeProto, ins: Sequence[_Shape], out: _Shape) -> int | None:
    if out is None or not ins or ins[0] is None or len(ins[0]) != 2:
        return None
    trans_a = _attr_int(node, "transA", 0)
    k = ins[0][0] if trans_a else ins[0][1]
    bias = math.prod(out) if len(ins) > 2 and ins[2] is not None else 0
    return 2 * math.prod(out) * k + bias


def _attr_ints(node: onnx.NodeProto, name: str) -> list[int]:
    for attr in node.attribute:
        if attr.name == name:
            return list(attr.ints)
    return []


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default
