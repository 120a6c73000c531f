"""TensorRT engines as the runtime sees them: what is installed here, and what an engine file is called.

An engine is specific to the TensorRT version and the GPU it was built on, so
its file name says both: ``<stem>.<precision>.trt<version>.<gpu>.engine``,
beside the ONNX file it was built from. :func:`tandem.executors.base.engine_for`
finds one for this machine; ``tandem build-engine``
(:mod:`tandem.partitioner.engine`) builds them. Nothing here imports TensorRT
or cuda-python at import time.
"""

from __future__ import annotations

import functools
import re
from typing import Any

__all__ = [
    "PRECISIONS",
    "cuda_runtime",
    "engine_name",
    "engine_status_message",
    "gpu_name",
    "import_tensorrt",
    "local_engine_name",
    "tensorrt_available",
    "tensorrt_version",
]

PRECISIONS = ("fp32", "fp16", "int8")
_UNAVAILABLE = "the engine will be built on the device by `tandem build-engine`"


# --- what is installed ------------------------------------------------------------------------------------------------


def import_tensorrt() -> Any | None:
    """The ``tensorrt`` module, or None when it is not installed."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


def cuda_runtime() -> Any | None:
    """cuda-python's runtime bindings (``cuda.bindings`` or the older ``cuda.cudart``), or None."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            return None
    return runtime


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None when it cannot be imported."""
    trt = import_tensorrt()
    return None if trt is None else str(trt.__version__)


@functools.lru_cache(maxsize=1)
def gpu_name() -> str | None:
    """Name of CUDA device 0, or None when no CUDA device can be opened."""
    runtime = cuda_runtime()
    if runtime is not None:
        err, count = runtime.cudaGetDeviceCount()
        if int(err) != 0 or not count:
            return None
        err, props = runtime.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name
            return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")
    trt = import_tensorrt()
    if trt is None:
        return None
    # No cuda-python: a builder can only be made with a working CUDA device.
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except (RuntimeError, TypeError):
        return None
    return "cuda-device" if builder is not None else None


def tensorrt_available() -> bool:
    """True when TensorRT imports and a CUDA device is present."""
    return import_tensorrt() is not None and gpu_name() is not None


def engine_status_message() -> str:
    """One plain line: can engines be built on this machine, and if not, where they will be."""
    version = tensorrt_version()
    if version is None:
        return f"TensorRT is not installed here: {_UNAVAILABLE}."
    gpu = gpu_name()
    if gpu is None:
        return f"TensorRT {version} is installed but no CUDA GPU is available here: {_UNAVAILABLE}."
    return f"TensorRT {version} on {gpu}: engines can be built here."


def _sanitise(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


def engine_name(onnx_stem: str, precision: str, *, trt_version: str, gpu: str) -> str:
    """``<stem>.<precision>.trt<version>.<gpu>.engine``, each part made safe for a file name."""
    return f"{_sanitise(onnx_stem)}.{precision}.trt{_sanitise(trt_version)}.{_sanitise(gpu)}.engine"


def local_engine_name(onnx_stem: str, precision: str) -> str | None:
    """The engine name for this machine's TensorRT and GPU, or None when either is missing."""
    version, gpu = tensorrt_version(), gpu_name()
    if version is None or gpu is None:
        return None
    return engine_name(onnx_stem, precision, trt_version=version, gpu=gpu)
