"""Image classifiers from torchvision definitions: ResNet-50, MobileNetV2, VGG-16.

The weights are random (``weights=None``, seeded with :data:`SEED`): no weights
can be downloaded, and the partitioner only needs the architecture to price
layers and check that a split computes what the whole model computes. The ONNX
graph takes ``input`` (float32 ``[batch, 3, 224, 224]``) and returns ``logits``
(float32 ``[batch, 1000]``); it is exported with the TorchScript exporter at
opset :data:`OPSET`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from tandem.models.base import ExportedModel, ReferenceModel, export_onnx
from tandem.partitioner.errors import ReferenceModelError

__all__ = ["IMAGE_SHAPE", "OPSET", "SEED", "mobilenet_v2", "resnet50", "sample_images", "vgg16"]

SEED = 0
OPSET = 17
IMAGE_SHAPE = (3, 224, 224)
SAMPLE_COUNT = 2
INPUT_NAMES = ("input",)
OUTPUT_NAMES = ("logits",)

# ImageNet normalisation, as torchvision's classifiers expect.
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)
PHOTOS = ("china.jpg", "flower.jpg")


def sample_images(batch: int, count: int = SAMPLE_COUNT) -> list[dict[str, np.ndarray]]:
    """``count`` batches of real photos (the two scikit-learn ships), ImageNet-normalised, as model inputs.

    Real photos, not noise, so that codecs compress the activations as they
    would in use. Each photo is centre-cropped to a square and resized to 224.
    """
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = []
    for name in PHOTOS:
        pixels = load_sample_image(name)
        height, width = pixels.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = Image.fromarray(pixels[top : top + side, left : left + side])
        resized = np.asarray(square.resize(IMAGE_SHAPE[1:], Image.Resampling.BILINEAR), np.float32) / 255.0
        photos.append(((resized - _MEAN) / _STD).transpose(2, 0, 1))
    samples = []
    for index in range(count):
        images = [photos[(index * batch + k) % len(photos)] for k in range(batch)]
        samples.append({"input": np.ascontiguousarray(np.stack(images), dtype=np.float32)})
    return samples


def _build(name: str) -> Any:
    import torch
    import torchvision

    torch.manual_seed(SEED)
    try:
        factory = getattr(torchvision.models, name)
    except AttributeError as exc:
        raise ReferenceModelError(f"model {name!r}: torchvision {torchvision.__version__} has no such model") from exc
    return factory(weights=None).eval()


def _export(torchvision_name: str, model_name: str, path: Path, batch: int = 1) -> ExportedModel:

    if batch < 1:
        raise ReferenceModelError(f"model {model_name!r}: batch must be at least 1, got {batch}")
    samples = sample_images(batch)
    path = Path(path)
    export_onnx(_build(torchvision_name), samples[0]["input"], path, INPUT_NAMES, OUTPUT_NAMES, OPSET)
    return ExportedModel(path=path, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, sample_inputs=samples)


def _reference(model_name: str, torchvision_name: str, description: str) -> ReferenceModel:
    export: Callable[[Path, int], ExportedModel] = partial(_export, torchvision_name, model_name)
    return ReferenceModel(name=model_name, description=description, weights="random", export=export)


def resnet50() -> ReferenceModel:
    """ResNet-50 (torchvision definition, random weights): 25.6 M parameters, skip connections."""
    return _reference("resnet50", "resnet50", "ResNet-50 image classifier, torchvision definition, random weights")


def mobilenet_v2() -> ReferenceModel:
    """MobileNetV2 (torchvision definition, random weights): 3.5 M parameters, inverted residuals."""
    return _reference(
        "mobilenet_v2", "mobilenet_v2", "MobileNetV2 image classifier, torchvision definition, random weights"
    )


def vgg16() -> ReferenceModel:
    """VGG-16 (torchvision definition, random weights): 138 M parameters, a plain chain."""
    return _reference("vgg16", "vgg16", "VGG-16 image classifier, torchvision definition, random weights")
