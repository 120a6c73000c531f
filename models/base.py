"""What every reference model provides to the partitioner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ExportedModel", "ReferenceModel", "export_onnx"]


@dataclass(frozen=True)
class ExportedModel:
    """An ONNX file on disk and sample inputs to run it with."""

    path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    sample_inputs: list[dict[str, np.ndarray]] = field(default_factory=list)


@dataclass(frozen=True)
class ReferenceModel:
    """A model Tandem ships a definition for, exported to ONNX on demand.

    ``export(path, batch)`` writes the ONNX file and returns it with sample
    inputs. ``weights`` says whether the weights are real ("trained",
    "packaged") or random ("random", for cost work only).
    """

    name: str
    description: str
    weights: str
    export: Callable[[Path, int], ExportedModel]


def export_onnx(
    module: Any,
    example: np.ndarray,
    path: Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    opset: int,
) -> None:
    """Write ``module`` (a torch module in eval mode) to ``path`` with the TorchScript exporter, traced on ``example``.

    The reference models' shapes are static, so the TorchScript exporter
    needs nothing beyond torch (the default dynamo exporter needs onnxscript).
    """
    import warnings

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
        torch.onnx.export(
            module,
            (torch.from_numpy(example),),
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
