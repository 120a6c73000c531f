"""TensorRT engine build for one ONNX part, and the ``tandem build-engine`` command.

An engine is specific to the TensorRT version and the GPU it was built on, so
it is built where it will run: on the Jetson by ``tandem build-engine``, or
on the hub for the cloud part. Where TensorRT or a CUDA GPU is missing (the
partitioner's own machine, usually),
:func:`~tandem.executors.engines.engine_status_message` says so
plainly and the plan carries ONNX files only.

Nothing here imports onnx or torch: the command has to work on an edge box.
Device memory for int8 calibration comes from cuda-python (``cuda.bindings``
or the older ``cuda.cudart``), which ships alongside TensorRT on JetPack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tandem.executors.engines import (
    PRECISIONS,
    cuda_runtime,
    engine_name,
    engine_status_message,
    gpu_name,
    import_tensorrt,
    tensorrt_available,
    tensorrt_version,
)
from tandem.partitioner.errors import EngineBuildError, TensorRTUnavailable

__all__ = [
    "EXIT_UNAVAILABLE",
    "build_engine",
    "engine_file_name",
    "register",
]

EXIT_UNAVAILABLE = 3
DEFAULT_WORKSPACE_MB = 1024


# --- naming ----------------------------------------------------------------------------------------------------------


def engine_file_name(onnx_stem: str, precision: str, *, trt_version: str | None = None, gpu: str | None = None) -> str:
    """``<stem>.<precision>.trt<version>.<gpu>.engine``; version and GPU default to this machine's."""
    if precision not in PRECISIONS:
        raise EngineBuildError(
            f"engine for {onnx_stem!r}: unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
        )
    version = trt_version if trt_version is not None else tensorrt_version()
    device = gpu if gpu is not None else gpu_name()
    if version is None or device is None:
        raise TensorRTUnavailable(f"engine for {onnx_stem!r}: {engine_status_message()}")
    return engine_name(onnx_stem, precision, trt_version=version, gpu=device)


# --- the build --------------------------------------------------------------------------------------------------------


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    *,
    fp16: bool,
    int8: bool,
    calibration_inputs: Sequence[dict[str, np.ndarray]] | None = None,
    version_compatible: bool = True,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
) -> Path:
    """Parse ``onnx_path`` with TensorRT's OnnxParser, build a serialised engine, write it into ``out_dir``.

    ``int8`` needs ``calibration_inputs`` (one dict of input arrays per
    batch) for an entropy calibrator. Returns the engine's path.
    """
    trt = import_tensorrt()
    if trt is None or gpu_name() is None:
        raise TensorRTUnavailable(f"{onnx_path}: {engine_status_message()}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_path}: ONNX file not found")
    if int8 and not calibration_inputs:
        raise EngineBuildError(f"{onnx_path}: int8 needs calibration inputs (a few representative batches)")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT 10, required before
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise EngineBuildError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {problems or 'no details'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    calibrator = None
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = _make_calibrator(trt, list(calibration_inputs or ()), onnx_path)
        config.int8_calibrator = calibrator
    if version_compatible:
        if not hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"):
            raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} cannot build version-compatible engines")
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None:
        calibrator.free()
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / engine_file_name(onnx_path.stem, precision)
    path.write_bytes(bytes(serialized))
    return path


def _make_calibrator(trt: Any, batches: list[dict[str, np.ndarray]], onnx_path: Path) -> Any:
    found = cuda_runtime()
    if found is None:
        raise EngineBuildError(f"{onnx_path}: int8 calibration needs cuda-python (pip install cuda-python)")
    runtime: Any = found

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds the calibration batches to TensorRT from device buffers."""

        def __init__(self) -> None:
            super().__init__()
            self._batches = batches
            self._index = 0
            self._buffers: dict[str, tuple[int, int]] = {}

        def get_batch_size(self) -> int:
            # explicit-batch networks take each calibration dict whole, at the network's own shapes
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._index >= len(self._batches):
                return None
            batch = self._batches[self._index]
            self._index += 1
            pointers = []
            for name in names:
                if name not in batch:
                    raise EngineBuildError(f"{onnx_path}: calibration batch has no input {name!r}")
                array = np.ascontiguousarray(batch[name])
                pointers.append(self._upload(name, array))
            return pointers

        def _upload(self, name: str, array: np.ndarray) -> int:
            pointer, size = self._buffers.get(name, (0, 0))
            if size < array.nbytes:
                if pointer:
                    runtime.cudaFree(pointer)
                err, pointer = runtime.cudaMalloc(array.nbytes)
                if int(err) != 0:
                    raise EngineBuildError(f"{onnx_path}: cudaMalloc of {array.nbytes} bytes failed ({err})")
                self._buffers[name] = (pointer, array.nbytes)
            kind = runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
            (err,) = runtime.cudaMemcpy(pointer, array.ctypes.data, array.nbytes, kind)
            if int(err) != 0:
                raise EngineBuildError(f"{onnx_path}: copying calibration input {name!r} to the GPU failed ({err})")
            return int(pointer)

        def read_calibration_cache(self) -> None:
            return None

        def write_calibration_cache(self, cache: bytes) -> None:
            return None

        def free(self) -> None:
            for pointer, _ in self._buffers.values():
                runtime.cudaFree(pointer)
            self._buffers.clear()

    return EntropyCalibrator()


# --- the command ------------------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add the ``build-engine`` command."""
    parser = subparsers.add_parser(
        "build-engine",
        help="build TensorRT engines from an ONNX file or every ONNX file in a plan folder",
        description="Build a TensorRT engine (.plan) for an ONNX file, or for every ONNX file in a plan folder, "
        "on this machine's GPU: engines are specific to the GPU and TensorRT version they are built with, so run "
        "it on the Jetson or the hub that will load them.",
    )
    parser.add_argument("source", type=Path, metavar="ONNX_OR_PLAN_DIR", help="an .onnx file or a plan folder")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the engines into")
    parser.add_argument("--fp16", action="store_true", help="allow fp16 kernels")
    parser.add_argument("--int8", action="store_true", help="allow int8 kernels (needs --calibration)")
    parser.add_argument(
        "--calibration", type=Path, metavar="NPZ",
        help="int8 calibration data: one array per input name, samples stacked on a new first axis",
    )  # fmt: skip
    parser.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB, help="builder workspace limit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the engines, or say plainly why they cannot be built here."""
    if not tensorrt_available():
        print(f"tandem build-engine: {engine_status_message()}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    sources = sorted(args.source.glob("*.onnx")) if args.source.is_dir() else [args.source]
    if not sources:
        print(f"tandem build-engine: {args.source}: no .onnx files in this folder", file=sys.stderr)
        return 2
    try:
        calibration = _load_calibration(args.calibration) if args.int8 else None
    except (OSError, ValueError) as exc:
        print(f"tandem build-engine: {args.calibration}: cannot read calibration data: {exc}", file=sys.stderr)
        return 2
    print(f"tandem build-engine: {engine_status_message()}")
    for source in sources:
        try:
            path = build_engine(
                source, args.out, fp16=args.fp16, int8=args.int8, calibration_inputs=calibration,
                workspace_mb=args.workspace_mb,
            )  # fmt: skip
        except EngineBuildError as exc:
            print(f"tandem build-engine: {exc}", file=sys.stderr)
            return 1
        print(f"built {path} from {source}")
    return 0


def _load_calibration(path: Path | None) -> list[dict[str, np.ndarray]] | None:
    if path is None:
        return None
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    if not arrays:
        raise ValueError("the file holds no arrays")
    count = min(len(array) for array in arrays.values())
    return [{name: array[i] for name, array in arrays.items()} for i in range(count)]
