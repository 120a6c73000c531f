"""A calibration set: many real inputs, read from images, an ``.npz`` or a folder of ``.npy`` files.

The partitioner measures wire bytes, verifies every kept split and codec and
measures fidelity on these samples (see :mod:`tandem.partitioner.pipeline`).
:func:`load_calibration` reads ``--calibration PATH``:

- a folder of images (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.tif``, ``.tiff``, ``.webp``),
  each turned into one input by :func:`preprocess_image` with the config's
  declared preprocessing, at the input's height and width (given by the model or
  ``--input-shape``/``--dim``); the preprocessing is recorded in plan.yaml;
- an ``.npz`` holding one array per model input, the first axis indexing samples
  (an array of the input's own rank is split into batch-1 samples);
- a folder of ``.npy`` files: ``<input>.npy`` for each input like an ``.npz``
  entry, or for a one-input model any ``*.npy``, each holding one or more samples.

Every failure names the path, the input and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from tandem.partitioner.config import Calibration, ImagePreprocess
from tandem.partitioner.errors import PartitionError
from tandem.partitioner.shapes import ShapeHints, declared_shapes, resolve_shapes

__all__ = ["IMAGE_SUFFIXES", "CalibrationError", "CalibrationSet", "load_calibration", "preprocess_image"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class CalibrationError(PartitionError):
    """A calibration set cannot be read, or its samples do not fit the model's inputs."""


@dataclass(frozen=True)
class CalibrationSet:
    """The samples read, where from, and (for images) the preprocessing that made them."""

    samples: list[dict[str, np.ndarray]]
    source: str
    kind: str
    preprocess: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)


def preprocess_image(pixels: np.ndarray, height: int, width: int, settings: ImagePreprocess) -> np.ndarray:
    """A uint8 photo (``[H, W]``, ``[H, W, 3|4]``) as one float32 input ``[1, C, height, width]`` (or NHWC)."""
    from PIL import Image

    image = np.asarray(pixels)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected a uint8 image [H, W] or [H, W, 3|4], got {image.dtype} {list(image.shape)}")
    image = np.ascontiguousarray(image[:, :, :3])
    if settings.fit == "crop":
        rows, cols = image.shape[:2]
        if rows * width > cols * height:  # too tall for the target aspect
            keep = max(1, round(cols * height / width))
            top = (rows - keep) // 2
            image = image[top : top + keep]
        else:
            keep = max(1, round(rows * width / height))
            left = (cols - keep) // 2
            image = image[:, left : left + keep]
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.BILINEAR)
    x = np.asarray(resized, np.float32)
    if settings.channels == "BGR":
        x = x[:, :, ::-1]
    mean, std = np.asarray(settings.mean, np.float32), np.asarray(settings.std, np.float32)
    x = ((x * np.float32(settings.scale) - mean) / std).astype(np.float32)
    if settings.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None], dtype=np.float32)


def _input_types(model: onnx.ModelProto) -> dict[str, np.dtype]:
    initializers = {init.name for init in model.graph.initializer}
    return {
        info.name: np.dtype(helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))
        for info in model.graph.input
        if info.name not in initializers
    }


def _image_input(model: onnx.ModelProto, settings: ImagePreprocess, where: str) -> str:
    types = _input_types(model)
    if settings.input is not None:
        if settings.input not in types:
            raise CalibrationError(
                f"{where}: calibration.preprocess.input {settings.input!r} is not an input of the model; "
                f"its inputs: {', '.join(repr(n) for n in types)}"
            )
        return settings.input
    floats = [name for name, dtype in types.items() if dtype.kind == "f"]
    if len(types) != 1 or len(floats) != 1:
        raise CalibrationError(
            f"{where}: a folder of images feeds one float input, but the model has inputs "
            f"{ {n: str(d) for n, d in types.items()} }; give .npz/.npy samples for every input instead"
        )
    return floats[0]


def _load_images(
    folder: Path, files: list[Path], model: onnx.ModelProto, hints: ShapeHints | None, settings: Calibration
) -> CalibrationSet:
    from PIL import Image

    where = str(folder)
    name = _image_input(model, settings.preprocess, where)
    rank = len(declared_shapes(model)[name])
    if rank != 4:
        raise CalibrationError(f"{where}: images feed a 4-d input [N, C, H, W] or [N, H, W, C]; {name!r} has {rank}")
    shape = resolve_shapes(model, hints, where=where)[0][name]
    pre = settings.preprocess
    height, width = (shape[2], shape[3]) if pre.layout == "NCHW" else (shape[1], shape[2])
    channels = shape[1] if pre.layout == "NCHW" else shape[3]
    if channels != 3 or shape[0] != 1:
        raise CalibrationError(
            f"{where}: input {name!r} at {list(shape)} is not one {pre.layout} RGB image (batch 1, 3 channels); "
            "set calibration.preprocess.layout, or give .npz samples"
        )
    samples = []
    for path in files[: settings.max_samples]:
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
        except OSError as exc:
            raise CalibrationError(f"{path}: not an image Pillow can read: {exc}") from exc
        samples.append({name: preprocess_image(pixels, height, width, pre)})
    recorded = {"input": name, "height": height, "width": width} | pre.model_dump(mode="json", exclude={"input"})
    return CalibrationSet(samples, where, "images", recorded, [p.name for p in files[: settings.max_samples]])


def _split_samples(
    arrays: Mapping[str, np.ndarray], model: onnx.ModelProto, where: str, limit: int
) -> list[dict[str, np.ndarray]]:
    declared = declared_shapes(model)
    types = _input_types(model)
    missing = [n for n in declared if n not in arrays]
    unknown = [n for n in arrays if n not in declared]
    if missing or unknown:
        raise CalibrationError(
            f"{where}: arrays {sorted(arrays)} do not match the model's inputs {list(declared)}: "
            f"missing {missing}, unknown {unknown}"
        )
    per_input: dict[str, list[np.ndarray]] = {}
    for name, array in arrays.items():
        rank = len(declared[name])
        if array.dtype != types[name]:
            raise CalibrationError(f"{where}: input {name!r} is {array.dtype}, the model expects {types[name]}")
        if array.ndim == rank + 1:
            per_input[name] = [array[i] for i in range(array.shape[0])]
        elif array.ndim == rank and rank > 0:
            per_input[name] = [array[i : i + 1] for i in range(array.shape[0])]
        else:
            raise CalibrationError(
                f"{where}: input {name!r} has shape {list(array.shape)}; expected [samples, *{declared[name]}] "
                f"(rank {rank + 1}) or a batch of rank {rank}"
            )
    counts = {name: len(items) for name, items in per_input.items()}
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"{where}: inputs hold different numbers of samples: {counts}")
    count = min(next(iter(counts.values()), 0), limit)
    if count == 0:
        raise CalibrationError(f"{where}: no samples")
    # np.array, not np.ascontiguousarray, which would make a 0-d sample (a scalar input) 1-d
    return [{name: np.array(items[i], order="C") for name, items in per_input.items()} for i in range(count)]


def _load_npy_folder(folder: Path, files: list[Path], model: onnx.ModelProto, limit: int) -> list[dict[str, Any]]:
    names = list(declared_shapes(model))
    by_name = {p.stem: p for p in files}
    if all(n in by_name for n in names):
        arrays = {n: np.load(by_name[n], allow_pickle=False) for n in names}
        return _split_samples(arrays, model, str(folder), limit)
    if len(names) != 1:
        raise CalibrationError(
            f"{folder}: a folder of .npy files for a model with inputs {names} needs one file per input, "
            f"named {', '.join(n + '.npy' for n in names)}"
        )
    samples: list[dict[str, Any]] = []
    for path in files:
        samples += _split_samples({names[0]: np.load(path, allow_pickle=False)}, model, str(path), limit)
        if len(samples) >= limit:
            break
    return samples[:limit]


def load_calibration(
    path: Path, model: onnx.ModelProto, settings: Calibration, hints: ShapeHints | None = None
) -> CalibrationSet:
    """Read the calibration set at ``path`` for ``model`` (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"--calibration {path}: not found; give a folder of images, an .npz or .npy files")
    try:
        if path.is_file():
            if path.suffix.lower() != ".npz":
                raise CalibrationError(f"--calibration {path}: a file must be an .npz (or give a folder)")
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: np.asarray(data[name]) for name in data.files}
            return CalibrationSet(_split_samples(arrays, model, str(path), settings.max_samples), str(path), "npz")
        entries = sorted(p for p in path.iterdir() if p.is_file())
        images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        arrays_files = [p for p in entries if p.suffix.lower() == ".npy"]
        if images and not arrays_files:
            return _load_images(path, images, model, hints, settings)
        if arrays_files and not images:
            samples = _load_npy_folder(path, arrays_files, model, settings.max_samples)
            return CalibrationSet(samples, str(path), "npy", files=[p.name for p in arrays_files])
    except (OSError, ValueError) as exc:
        if isinstance(exc, PartitionError):
            raise
        raise CalibrationError(f"--calibration {path}: cannot read the samples: {exc}") from exc
    raise CalibrationError(
        f"--calibration {path}: expected a folder of images ({', '.join(IMAGE_SUFFIXES)}) or of .npy files, "
        f"found {'both' if entries else 'neither'}"
    )
