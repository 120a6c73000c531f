"""What every reference model provides to the partitioner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ExportedModel", "ReferenceModel"]


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
