"""Executors: run one ONNX model or engine; one file each, chosen by name.

``open_executor(name, path, **options)`` is the only entry point the edge agent
and the hub use. ``auto`` picks TensorRT when it is importable and a GPU is
present, and ONNX Runtime otherwise.
"""

from tandem.executors.base import Executor, ExecutorError, TensorInfo, open_executor

__all__ = ["Executor", "ExecutorError", "TensorInfo", "open_executor"]
