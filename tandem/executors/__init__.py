"""Executors: run one ONNX model or engine; one file each, chosen by name.

``open_executor(name, path, **options)`` is the only entry point the edge agent
and the hub use. ``auto`` picks TensorRT when it is importable and a GPU is
present, and ONNX Runtime otherwise. Configs check their ``executor`` names
with ``check_executor_name`` against the same registry (``EXECUTORS``).
"""

from tandem.executors.base import (
    Executor,
    ExecutorError,
    TensorInfo,
    check_executor_name,
    executor_names,
    open_executor,
)

__all__ = ["Executor", "ExecutorError", "TensorInfo", "check_executor_name", "executor_names", "open_executor"]
