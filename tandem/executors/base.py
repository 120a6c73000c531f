"""The executor interface and the registry that picks one by name."""

from __future__ import annotations

import difflib
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.errors import TandemError
from tandem.transport.codec import dtype_name

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "TensorInfo",
    "check_executor_name",
    "engine_for",
    "executor_names",
    "open_executor",
]

# name -> "module:Class"; add a line (and a file) to add an executor.
EXECUTORS = {
    "onnxruntime": "tandem.executors.onnxruntime_executor:OnnxRuntimeExecutor",
    "tensorrt": "tandem.executors.tensorrt_executor:TensorRTExecutor",
}


def executor_names() -> tuple[str, ...]:
    """The names a config may give: ``auto`` and every registered executor."""
    return ("auto", *EXECUTORS)


def check_executor_name(name: str) -> str:
    """``name`` when it is one of :func:`executor_names`; else ValueError saying which are known."""
    known = executor_names()
    if name in known:
        return name
    guess = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    raise ValueError(f"unknown executor {name!r}; known: {', '.join(known)}{hint}")


class ExecutorError(TandemError):
    """A model could not be loaded or run; the message names the file and the reason."""


@dataclass(frozen=True)
class TensorInfo:
    """An input or output: name, numpy dtype name, shape (None for a dynamic dim)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def accepts(self, array: np.ndarray) -> str | None:
        """Why ``array`` does not fit this input, or None when it does."""
        got = dtype_name(array.dtype)
        if got != self.dtype:
            return f"dtype {got}, expected {self.dtype}"
        if len(array.shape) != len(self.shape) or any(
            want is not None and want != got for want, got in zip(self.shape, array.shape, strict=True)
        ):
            expected = ["?" if d is None else d for d in self.shape]
            return f"shape {list(array.shape)}, expected {expected}"
        return None


class Executor(ABC):
    """One loaded model: its inputs and outputs, and ``run``."""

    name: str = ""
    path: Path
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on ``feeds`` (input name -> array); returns output name -> array."""

    @property
    def batchable(self) -> bool:
        """True when every input and output has a dynamic first (batch) dimension."""
        return all(t.shape and t.shape[0] is None for t in (*self.inputs, *self.outputs))

    def describe(self) -> str:
        """One line for logs: executor, file, and where it runs."""
        return f"{self.name} {self.path.name}"


def engine_for(onnx_path: Path) -> Path | None:
    """The TensorRT engine `tandem build-engine` made for ``onnx_path`` on this TensorRT and GPU, if any.

    Engines sit beside the ONNX file as ``<stem>.<precision>.trt<version>.<gpu>.engine``;
    fp16 is preferred over int8 and fp32 when several were built.
    """
    from tandem.executors.engines import local_engine_name

    for precision in ("fp16", "int8", "fp32"):
        name = local_engine_name(onnx_path.stem, precision)
        if name is not None and onnx_path.with_name(name).is_file():
            return onnx_path.with_name(name)
    return None


def open_executor(name: str, path: str | Path, **options: Any) -> Executor:
    """Load ``path`` with the executor called ``name`` (``auto``, ``onnxruntime``, ``tensorrt``).

    ``auto`` runs an engine built for an ONNX file on this device when TensorRT
    is available (see :func:`engine_for`), and ONNX Runtime otherwise.
    """
    if name == "auto":
        from tandem.executors.tensorrt_executor import tensorrt_ready

        engine = engine_for(Path(path)) if tensorrt_ready() else None
        if engine is not None:
            path, name = engine, "tensorrt"
        else:
            name = "tensorrt" if tensorrt_ready() and Path(path).suffix in (".engine", ".plan") else "onnxruntime"
    if name not in EXECUTORS:
        try:
            check_executor_name(name)
        except ValueError as exc:
            raise ExecutorError(str(exc)) from None
    if name != "onnxruntime":
        options = {}  # providers and threads are ONNX Runtime settings
    module_name, class_name = EXECUTORS[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(Path(path), **options)
