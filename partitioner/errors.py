"""Errors raised by the partitioner; messages name the file, model, tensor or key at fault."""

from __future__ import annotations

from tandem.errors import TandemError

__all__ = [
    "AccuracyError",
    "DeviceSpecError",
    "EngineBuildError",
    "PartitionError",
    "ReferenceModelError",
    "TensorRTUnavailable",
]


class PartitionError(TandemError):
    """Root of partitioner errors; messages name the file, model, tensor or key at fault."""


class DeviceSpecError(PartitionError):
    """A device spec is unknown or its file does not validate."""


class EngineBuildError(PartitionError):
    """TensorRT could not parse an ONNX file or build an engine from it."""


class TensorRTUnavailable(PartitionError):
    """TensorRT or a CUDA device is missing on this machine."""


class AccuracyError(PartitionError):
    """An edge/cloud pair could not be run to measure accuracy at a split."""


class ReferenceModelError(PartitionError):
    """A reference model could not be loaded, trained or exported."""
