"""Native TensorRT engine executor (Jetson and datacenter GPUs).

Needs the ``tensorrt`` Python package and ``cuda-python`` (``cuda.cudart``),
which ship with JetPack and NVIDIA's containers. Where they are absent,
:func:`tensorrt_ready` is false and ``auto`` falls back to ONNX Runtime.
Written against the TensorRT 10 tensor-address API (``execute_async_v3``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tandem.executors.base import Executor, ExecutorError, TensorInfo

__all__ = ["TensorRTExecutor", "tensorrt_ready"]

logger = logging.getLogger("tandem.executors.tensorrt")


def tensorrt_ready() -> bool:
    """True when TensorRT, the CUDA runtime bindings and a GPU are all present."""
    try:
        import tensorrt  # noqa: F401
        from cuda import cudart
    except ImportError:
        return False
    err, count = cudart.cudaGetDeviceCount()
    return int(err) == 0 and count > 0


class TensorRTExecutor(Executor):
    """A deserialised engine with device buffers sized for its static shapes."""

    name = "tensorrt"

    def __init__(self, path: Path) -> None:
        if not tensorrt_ready():
            raise ExecutorError(
                f"{path}: TensorRT is not available here (needs tensorrt, cuda-python and an NVIDIA GPU); "
                "use executor 'onnxruntime' or 'auto'"
            )
        import tensorrt as trt
        from cuda import cudart

        self._cudart = cudart
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(self._trt_logger).deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise ExecutorError(f"{path}: TensorRT could not deserialise the engine (built for another version/GPU?)")
        self._engine = engine
        self._context = engine.create_execution_context()
        self.path = Path(path)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        infos = {n: self._info(trt, n) for n in names}
        self.inputs = tuple(infos[n] for n in names if is_input[n])
        self.outputs = tuple(infos[n] for n in names if not is_input[n])
        self._stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._device: dict[str, int] = {}
        for info in (*self.inputs, *self.outputs):
            if any(d is None for d in info.shape):
                raise ExecutorError(
                    f"{path}: tensor {info.name} has a dynamic shape; build the engine with static shapes"
                )
            shape = tuple(int(d or 0) for d in info.shape)
            nbytes = int(np.prod(shape)) * np.dtype(info.dtype).itemsize
            self._device[info.name] = self._check(cudart.cudaMalloc(nbytes), "cudaMalloc")
            self._context.set_tensor_address(info.name, self._device[info.name])
        logger.info("loaded TensorRT engine %s", path)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for info in self.inputs:
            host = np.ascontiguousarray(feeds[info.name], dtype=info.dtype)
            self._check(
                cudart.cudaMemcpyAsync(self._device[info.name], host.ctypes.data, host.nbytes, h2d, self._stream),
                "copy in",
            )
        if not self._context.execute_async_v3(self._stream):
            raise ExecutorError(f"{self.path.name}: TensorRT execution failed")
        outputs = {}
        for info in self.outputs:
            out = np.empty(tuple(int(d or 0) for d in info.shape), info.dtype)
            self._check(
                cudart.cudaMemcpyAsync(out.ctypes.data, self._device[info.name], out.nbytes, d2h, self._stream),
                "copy out",
            )
            outputs[info.name] = out
        self._check(cudart.cudaStreamSynchronize(self._stream), "synchronise")
        return outputs

    def _info(self, trt: Any, name: str) -> TensorInfo:
        shape = tuple(d if d >= 0 else None for d in self._engine.get_tensor_shape(name))
        return TensorInfo(name, np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name, shape)

    def _check(self, result: Any, what: str) -> Any:
        err, *value = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise ExecutorError(f"{self.path}: CUDA {what} failed with error {int(err)}")
        return value[0] if value else None
