"""FLOP and byte counts on small inline graphs, checked against hand counts."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper, numpy_helper

from tandem.partitioner.errors import PartitionError
from tandem.partitioner.flops import count_node_costs, ensure_node_names, total_flops


def _model(text: str) -> onnx.ModelProto:
    """Parse a graph; tensors declared in ``<...>`` without values become zero-filled weights (initializers)."""
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["" : 17]>\n' + text)
    for info in list(model.graph.value_info):
        tensor_type = info.type.tensor_type
        shape = [d.dim_value for d in tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(shape, dtype), info.name))
        model.graph.value_info.remove(info)
    return model


def _only(model: onnx.ModelProto):
    costs = count_node_costs(model)
    assert len(costs) == 1
    return next(iter(costs.values()))


def test_conv_with_bias_counts_two_flops_per_mac_plus_bias():
    model = _model(
        """g (float[1,3,8,8] x) => (float[1,4,8,8] y)
        <float[4,3,3,3] w, float[4] b> { y = Conv <pads = [1,1,1,1]> (x, w, b) }"""
    )
    cost = _only(model)
    # 4 output channels x 8x8 positions, each 3x3x3 MACs, plus one bias add per output
    assert cost.flops == 2 * (4 * 64) * 27 + 4 * 64
    assert cost.input_bytes == 3 * 64 * 4
    assert cost.output_bytes == 4 * 64 * 4
    assert cost.weight_bytes == (4 * 27 + 4) * 4
    assert cost.bytes_moved == cost.input_bytes + cost.output_bytes + cost.weight_bytes
    assert cost.shapes_known and cost.launches_kernel and not cost.fusible


def test_depthwise_conv_counts_one_input_channel_per_output():
    model = _model(
        """g (float[1,8,6,6] x) => (float[1,8,4,4] y)
        <float[8,1,3,3] w> { y = Conv <group = 8> (x, w) }"""
    )
    assert _only(model).flops == 2 * (8 * 16) * 9


def test_conv_transpose_spreads_each_input_over_a_kernel_patch():
    model = _model(
        """g (float[1,2,3,3] x) => (float[1,4,6,6] y)
        <float[2,4,2,2] w> { y = ConvTranspose <strides = [2,2]> (x, w) }"""
    )
    # 18 input elements, each multiplied into 4 output channels x 2x2 kernel
    assert _only(model).flops == 2 * 18 * 16


@pytest.mark.parametrize(
    ("a_shape", "attrs"),
    [("float[2,5]", ""), ("float[5,2]", "<transA = 1>")],
)
def test_gemm_counts_2mkn_plus_bias(a_shape, attrs):
    model = _model(
        f"""g ({a_shape} a) => (float[2,3] y)
        <float[5,3] b, float[3] c> {{ y = Gemm {attrs} (a, b, c) }}"""
    )
    cost = _only(model)
    assert cost.flops == 2 * 2 * 5 * 3 + 2 * 3
    assert cost.weight_bytes == (15 + 3) * 4


def test_batched_matmul_counts_every_batch():
    model = _model("g (float[2,4,3,5] a, float[2,4,5,6] b) => (float[2,4,3,6] y) { y = MatMul (a, b) }")
    assert _only(model).flops == 2 * (2 * 4 * 3 * 6) * 5


def test_elementwise_and_variadic_ops():
    model = _model(
        """g (float[2,3] a, float[2,3] b, float[2,3] c) => (float[2,3] s, float[2,3] r) {
            t = Add (a, b)
            r = Relu (t)
            s = Sum (a, b, c)
        }"""
    )
    costs = count_node_costs(model)
    by_op = {cost.op_type: cost for cost in costs.values()}
    assert by_op["Add"].flops == 6
    assert by_op["Relu"].flops == 6
    assert by_op["Sum"].flops == 2 * 6
    assert total_flops(costs) == 6 + 6 + 12
    assert all(cost.fusible for cost in costs.values())


def test_pooling_and_normalisations():
    model = _model(
        """g (float[1,2,4,4] x, float[2] s, float[2] o, float[2] m, float[2] v, float[2,5] z, float[2,4] n,
              float[4] g1, float[4] b1) => (float[1,2,2,2] p, float[1,2,1,1] q, float[1,2,4,4] bn, float[2,5] sm,
              float[2,4] ln, float[2,1] rm, float[2,1] rs) {
            p = MaxPool <kernel_shape = [2,2], strides = [2,2]> (x)
            q = GlobalAveragePool (x)
            bn = BatchNormalization (x, s, o, m, v)
            sm = Softmax <axis = 1> (z)
            ln = LayerNormalization <axis = -1> (n, g1, b1)
            rm = ReduceMean <axes = [1]> (n)
            rs = ReduceSumSquare <axes = [1]> (n)
        }"""
    )
    by_op = {cost.op_type: cost.flops for cost in count_node_costs(model).values()}
    assert by_op["MaxPool"] == 8 * 4  # 8 outputs, 2x2 window each
    assert by_op["GlobalAveragePool"] == 32
    assert by_op["BatchNormalization"] == 2 * 32
    assert by_op["Softmax"] == 5 * 10
    assert by_op["LayerNormalization"] == 8 * 8
    assert by_op["ReduceMean"] == 8
    assert by_op["ReduceSumSquare"] == 2 * 8


def test_other_ops_move_bytes_but_count_no_flops_and_views_cost_nothing():
    model = _model(
        """g (float[2,3] a) => (float[6] r) <int64[1] shape = {6}> {
            t = Transpose <perm = [1,0]> (a)
            r = Reshape (t, shape)
        }"""
    )
    costs = count_node_costs(model)
    transpose, reshape = costs.values()
    assert transpose.flops == 0
    assert transpose.bytes_moved == 2 * 6 * 4
    assert reshape.launches_kernel is False
    assert reshape.bytes_moved == 0 and reshape.flops == 0


def test_bytes_follow_dtypes_and_float_share_is_tracked():
    model = _model(
        """g (int64[4,8] ids, float16[4,8] h) => (float16[4,8] y) {
            c = Cast <to = 10> (ids)
            y = Add (c, h)
        }"""
    )
    cast, add = count_node_costs(model).values()
    assert cast.input_bytes == 32 * 8
    assert cast.output_bytes == 32 * 2
    assert cast.float_bytes == 32 * 2 and cast.float_elements == 32
    assert add.bytes_moved == 3 * 32 * 2


def test_symbolic_shapes_are_flagged_not_guessed():
    model = _model("g (float[N,16] a, float[16,4] b) => (float[N,4] y) { y = MatMul (a, b) }")
    cost = _only(model)
    assert cost.shapes_known is False
    assert cost.flops == 0


def test_ensure_node_names_is_stable_and_unique():
    model = _model(
        """g (float[2] a) => (float[2] y) {
            t = Relu (a)
            u = Relu (t)
            y = Neg (u)
        }"""
    )
    model.graph.node[2].name = "Relu_0"  # collides with the name the first node will get
    ensure_node_names(model)
    names = [node.name for node in model.graph.node]
    assert names == ["Relu_0", "Relu_1", "Relu_0_2"]
    ensure_node_names(model)
    assert [node.name for node in model.graph.node] == names


def test_count_node_costs_names_like_ensure_node_names_and_leaves_the_model_alone():
    model = _model("g (float[2] a) => (float[2] y) { t = Relu (a)\n y = Neg (t) }")
    assert list(count_node_costs(model)) == ["Relu_0", "Neg_1"]
    assert [node.name for node in model.graph.node] == ["", ""]


def test_shape_inference_failure_names_the_model():
    model = _model("broken (float[2,3] a, float[4,5] b) => (float[2,5] y) { y = MatMul (a, b) }")
    with pytest.raises(PartitionError, match="model 'broken': ONNX shape inference failed"):
        count_node_costs(model)
