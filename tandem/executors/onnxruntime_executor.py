"""ONNX Runtime executor, with the TensorRT, CUDA or CPU execution provider."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tandem.executors.base import Executor, ExecutorError, TensorInfo

__all__ = ["PREFERRED_PROVIDERS", "OnnxRuntimeExecutor"]

logger = logging.getLogger("tandem.executors.onnxruntime")

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class OnnxRuntimeExecutor(Executor):
    """An ``onnxruntime.InferenceSession`` on the best available provider.

    ``providers`` restricts the choice (e.g. ``["CPUExecutionProvider"]``);
    by default TensorRT, then CUDA, then CPU, whichever this build has.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, *, providers: list[str] | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wanted = providers or [p for p in PREFERRED_PROVIDERS if p in available]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ExecutorError(f"{path}: execution provider(s) {missing} not available; this build has {available}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ExecutorError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        self.path = path
        self.threads = threads
        self.providers = self._session.get_providers()
        self.inputs = tuple(_info(i) for i in self._session.get_inputs())
        self.outputs = tuple(_info(o) for o in self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        logger.debug("loaded %s on %s", path, self.providers[0])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._output_names, feeds)
        except Exception as exc:
            raise ExecutorError(f"{self.path.name}: run failed: {exc}") from exc
        return dict(zip(self._output_names, values, strict=True))

    def describe(self) -> str:
        threads = f", {self.threads} intra-op thread(s)" if self.threads else ""
        return f"onnxruntime {self.path.name} on {self.providers[0]}{threads}"


def _info(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorInfo(str(arg.name), _DTYPES.get(arg.type, str(arg.type)), shape)
