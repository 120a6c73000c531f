"""TensorRT engine naming and the plain answer where TensorRT cannot run.

The builder itself needs TensorRT and a CUDA GPU; it is not faked here. These
tests run where TensorRT is missing (the partitioner's usual machine) and are
skipped where it is installed.
"""

from __future__ import annotations

import argparse
import importlib.util

import pytest

from tandem.executors import engines
from tandem.partitioner import engine
from tandem.partitioner.errors import EngineBuildError, PartitionError, TensorRTUnavailable

needs_no_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem")
    engine.register(parser.add_subparsers(dest="command"))
    return parser


@pytest.mark.parametrize(
    ("stem", "precision", "version", "gpu", "expected"),
    [
        ("edge", "fp16", "10.3.0", "Orin", "edge.fp16.trt10.3.0.orin.engine"),
        ("cloud", "int8", "10.7.0.23", "NVIDIA H100 80GB HBM3", "cloud.int8.trt10.7.0.23.nvidia-h100-80gb-hbm3.engine"),
        ("Part 1/edge", "fp32", "8.6.2", "A100-SXM4-80GB", "part-1-edge.fp32.trt8.6.2.a100-sxm4-80gb.engine"),
    ],
)
def test_engine_file_name_names_precision_version_and_gpu(stem, precision, version, gpu, expected):
    assert engine.engine_file_name(stem, precision, trt_version=version, gpu=gpu) == expected


def test_engine_file_name_rejects_unknown_precision():
    with pytest.raises(EngineBuildError, match="engine for 'edge': unknown precision 'bf16'"):
        engine.engine_file_name("edge", "bf16", trt_version="10.3.0", gpu="Orin")


@needs_no_tensorrt
def test_status_message_says_where_the_engine_will_be_built():
    assert engines.tensorrt_available() is False
    assert engines.tensorrt_version() is None
    message = engines.engine_status_message()
    assert message == "TensorRT is not installed here: the engine will be built on the device by `tandem build-engine`."


@needs_no_tensorrt
def test_engine_file_name_needs_the_local_version_when_none_is_given():
    with pytest.raises(TensorRTUnavailable, match="engine for 'edge': TensorRT is not installed here"):
        engine.engine_file_name("edge", "fp16")


@needs_no_tensorrt
def test_build_engine_without_tensorrt_raises_with_the_plain_message(tmp_path):
    onnx_path = tmp_path / "edge.onnx"
    onnx_path.write_bytes(b"not read")
    with pytest.raises(TensorRTUnavailable, match="will be built on the device by `tandem build-engine`") as info:
        engine.build_engine(onnx_path, tmp_path / "engines", fp16=True, int8=False)
    assert isinstance(info.value, PartitionError)
    assert not (tmp_path / "engines").exists()


@needs_no_tensorrt
def test_build_engine_command_exits_non_zero_with_the_plain_message(tmp_path, capsys):
    args = _parser().parse_args(["build-engine", str(tmp_path / "plan"), "--out", str(tmp_path / "out"), "--fp16"])
    assert args.source == tmp_path / "plan" and args.fp16 and not args.int8
    code = args.func(args)
    assert code == engine.EXIT_UNAVAILABLE != 0
    err = capsys.readouterr().err
    assert err.strip() == f"tandem build-engine: {engines.engine_status_message()}"
    assert not (tmp_path / "out").exists()


def test_build_engine_command_requires_out(capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["build-engine", "edge.onnx"])
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err
