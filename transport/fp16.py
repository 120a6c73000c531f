"""float32 <-> float16 conversion at memory speed, for the ``fp16`` codec.

NumPy converts float32 to float16 element by element in software (0.2 to
0.7 GB/s on the x86 cores here, less on an edge box's ARM cores), which made
``fp16`` cost as much as running the edge part. ONNX Runtime's ``Cast`` runs
the same conversion with the CPU's vector instructions (F16C on x86, NEON on
ARM), about 8 GB/s here, with the same rounding (to nearest, ties to even).
It is used where ONNX Runtime is installed (every edge and hub install) and
the tensor is large enough to be worth a session call (about 20 us);
otherwise NumPy converts. Both give the same bits.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["from_float16", "to_float16"]

_MIN_ELEMENTS = 8192  # below this NumPy is as fast as a session call
_sessions: dict[str, Any] = {}
_lock = threading.Lock()


def to_float16(array: np.ndarray) -> np.ndarray:
    """``array`` (float32, already within float16's range) as little-endian float16."""
    if array.dtype == np.float32 and array.size >= _MIN_ELEMENTS:
        session = _session("to16")
        if session is not None:
            out: np.ndarray = session.run(None, {"x": np.ascontiguousarray(array)})[0]
            return out
    return array.astype("<f2")


def from_float16(wire: np.ndarray, dtype: str) -> np.ndarray:
    """``wire`` (float16) as ``dtype``."""
    if dtype == "float32" and wire.size >= _MIN_ELEMENTS and wire.dtype.isnative:
        session = _session("from16")
        if session is not None:
            out: np.ndarray = session.run(None, {"x": wire})[0]
            return out
    return wire.astype(dtype)


def _session(direction: str) -> Any:
    """A one-node Cast session (shared: ONNX Runtime's run is thread-safe), or None without onnxruntime."""
    session = _sessions.get(direction)
    if session is not None or direction in _sessions:
        return session
    with _lock:
        if direction not in _sessions:
            _sessions[direction] = _build(direction)
    return _sessions[direction]


def _build(direction: str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return _open(ort, _CAST_MODELS[direction])


def _open(ort: Any, model: bytes) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the codec runs per request; callers parallelise across requests
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception:  # an odd build without Cast kernels: NumPy converts instead
        return None


# The two one-node models (Cast float32 -> float16 and back, opset 13), serialized, so that an edge install
# needs onnxruntime only; tests/unit/test_fp16.py rebuilds them with onnx and compares.
_CAST_MODELS = {
    "to16": bytes.fromhex(
        "08083a3a0a170a01781201792204436173742a090a02746f180aa001021209636173745f746f31365a090a017812040a"
        "02080162090a017912040a02080a42040a00100d"
    ),
    "from16": bytes.fromhex(
        "08083a3c0a170a01781201792204436173742a090a02746f1801a00102120b636173745f66726f6d31365a090a017812"
        "040a02080a62090a017912040a02080142040a00100d"
    ),
}
