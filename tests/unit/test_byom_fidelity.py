"""Label-free fidelity by output kind, and result bytes charged to the downlink."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from tandem.partitioner.costs import CostModel, Link, measure_codecs
from tandem.partitioner.fidelity import output_kind, score
from tandem.partitioner.graph import analyse


def test_output_kinds_are_guessed_from_name_and_shape_and_the_config_wins() -> None:
    assert output_kind("logits", (1, 1000)) == "classes"
    assert output_kind("sentence_embedding", (1, 384)) == "embedding"
    assert output_kind("boxes", (1, 12, 525)) == "other"
    assert output_kind("logits", (1, 1000), {"logits": "embedding"}) == "embedding"


def test_class_agreement_and_top5_overlap() -> None:
    want = [np.array([[0.0, 5, 4, 3, 2, 1, -1]]), np.array([[9.0, 1, 2, 3, 4, 5, 6]])]
    got = [np.array([[0.0, 4, 5, 3, 2, 1, -1]]), np.array([[9.0, 1, 2, 3, 4, 5, 6]])]  # first: top-1 flips
    fidelity = score("classes", "logits", got, want)
    assert fidelity.kind == "classes" and fidelity.value == 0.5 and fidelity.samples == 2
    assert fidelity.top5_overlap == 1.0
    got[1] = np.array([[9.0, 1, 2, 3, 4, 5, 10]])  # second: top-1 moves to class 6
    assert score("classes", "logits", got, want).value == 0.0


def test_embedding_cosine_and_other_errors() -> None:
    want = [np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])]
    got = [np.array([[1.0, 1.0]]), np.array([[0.0, 3.0]])]
    fidelity = score("embedding", "e", got, want)
    assert fidelity.value == pytest.approx((np.sqrt(0.5) + 1.0) / 2)
    assert fidelity.cosine_min == pytest.approx(np.sqrt(0.5))
    other = score("other", "y", [np.array([[1.0, 2.0, 3.0, 4.1]])], [np.array([[1.0, 2.0, 3.0, 4.0]])])
    assert other.rel_err_p50 == 0.0 and other.rel_err_p99 == pytest.approx(0.1 / 4.0 * 0.97, rel=0.05)
    assert other.value == 1.0  # arg-max along the last axis agrees
    flipped = score("other", "y", [np.array([[5.0, 2.0]])], [np.array([[1.0, 2.0]])])
    assert flipped.value == 0.0


OUTPUT_HEAVY = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4] x) => (float[1, 4096] y) <float[4, 4096] w> {
    r = Relu(x)
    y = MatMul(r, w)
}
"""


def test_result_bytes_travel_on_the_downlink(tmp_path: Path) -> None:
    model = onnx.parser.parse_model(OUTPUT_HEAVY)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((4, 4096), np.float32), "w"))
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    graph = analyse(path, [{"x": np.ones((1, 4), np.float32)}])
    movable = {n: graph.activations[n] for n, t in graph.tensors.items() if t.consumers}
    codecs = measure_codecs(movable, ["raw"], progress=False)
    zero = dict.fromkeys(graph.node_names, 0.0)
    split = frozenset({graph.node_names[0]})  # Relu on the edge; MatMul and its 16 kB result in the cloud
    same = CostModel(graph, zero, zero, codecs).cost(split, "raw", Link(1.0, 0.0))
    assert same.result_bytes == 4096 * 4 and same.download_s == pytest.approx(4096 * 4 * 8 / 1e6)
    fast_down = CostModel(graph, zero, zero, codecs).cost(split, "raw", Link(1.0, 0.0, downlink_mbps=100.0))
    assert fast_down.download_s == pytest.approx(same.download_s / 100)
    assert fast_down.upload_s == same.upload_s
    fixed = CostModel(graph, zero, zero, codecs, downlink_mbps=50.0).cost(split, "raw", Link(1.0, 0.0))
    assert fixed.download_s == pytest.approx(same.download_s / 50)
