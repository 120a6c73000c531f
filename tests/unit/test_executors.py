"""Executors by name: ONNX Runtime here, TensorRT only where it exists, clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tandem.executors import ExecutorError, TensorInfo, open_executor
from tandem.executors.tensorrt_executor import tensorrt_ready


def relu_model(path: Path, batch: str | int = "N") -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_onnxruntime_runs_and_describes_its_tensors(tmp_path: Path) -> None:
    executor = open_executor("onnxruntime", relu_model(tmp_path / "m.onnx"), threads=1)
    assert executor.inputs == (TensorInfo("x", "float32", (None, 3)),)
    assert executor.batchable
    out = executor.run({"x": np.array([[-1.0, 0.0, 2.0]], np.float32)})
    np.testing.assert_array_equal(out["y"], [[0.0, 0.0, 2.0]])
    assert not open_executor("onnxruntime", relu_model(tmp_path / "s.onnx", batch=1)).batchable


@pytest.mark.skipif(tensorrt_ready(), reason="checks the fallback on a machine without TensorRT")
def test_auto_falls_back_to_onnxruntime_without_tensorrt_even_beside_an_engine(tmp_path: Path) -> None:
    model = relu_model(tmp_path / "edge.onnx")
    (tmp_path / "edge.fp16.trt10.3.0.orin.engine").write_bytes(b"not for this machine")
    assert open_executor("auto", model).name == "onnxruntime"
    with pytest.raises(ExecutorError, match=r"TensorRT is not available here .* use executor 'onnxruntime' or 'auto'"):
        open_executor("tensorrt", model)


def test_bad_names_files_and_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ExecutorError, match="unknown executor 'openvino'; known: auto, onnxruntime, tensorrt"):
        open_executor("openvino", tmp_path / "m.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage")
    with pytest.raises(ExecutorError, match=r"broken\.onnx: ONNX Runtime cannot load it"):
        open_executor("onnxruntime", broken)
    info = TensorInfo("x", "float32", (None, 3))
    assert info.accepts(np.zeros((2, 3), np.float32)) is None
    assert info.accepts(np.zeros((2, 4), np.float32)) == "shape [2, 4], expected ['?', 3]"
    assert info.accepts(np.zeros((2, 3), np.int64)) == "dtype int64, expected float32"
