"""The reference models Tandem ships, looked up by name.

Each entry is imported lazily, so asking for ``resnet50`` does not import
transformers, and a missing optional package only fails the model that needs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

from tandem.models.base import ReferenceModel
from tandem.partitioner.errors import ReferenceModelError

__all__ = ["REFERENCE_NAMES", "get_reference", "labelled_samples"]

# name -> (module, factory function)
_FACTORIES: dict[str, tuple[str, str]] = {
    "resnet50": ("tandem.models.vision", "resnet50"),
    "mobilenet_v2": ("tandem.models.vision", "mobilenet_v2"),
    "vgg16": ("tandem.models.vision", "vgg16"),
    "efficientnet_lite1": ("tandem.models.efficientnet_lite", "reference"),
    "minilm": ("tandem.models.minilm", "reference"),
    "digits_cnn": ("tandem.models.digits", "reference"),
}

REFERENCE_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def get_reference(name: str) -> ReferenceModel:
    """The reference model called ``name``; an unknown name is an error listing the known ones."""
    try:
        module_name, factory_name = _FACTORIES[name]
    except KeyError:
        raise ReferenceModelError(
            f"unknown model {name!r}: not an ONNX file and not a reference model; "
            f"known reference models: {', '.join(REFERENCE_NAMES)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ReferenceModelError(f"model {name!r}: cannot import {module_name}: {exc}") from exc
    factory: Callable[[], ReferenceModel] = getattr(module, factory_name)
    return factory()


def labelled_samples(name: str, count: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray] | None:
    """Up to ``count`` held-out inputs (batch 1) and their labels, for models trained on a labelled set.

    None for models without labelled data here (random weights, or an embedding model).
    """
    if name != "digits_cnn":
        return None
    from tandem.models.digits import test_set

    images, labels = test_set()
    count = min(count, len(images))
    return [{"input": images[i : i + 1]} for i in range(count)], labels[:count]
