"""Many distinct real images, cheaply: deterministic crops of the photos scikit-learn and scikit-image ship.

:func:`photo_crops` cuts ``count`` crops of varying position, size and aspect
out of the bundled photos (:data:`tandem.models.efficientnet_lite.PHOTOS`,
no download), optionally mirrored, for calibration sets, corpus tests and the
fidelity benchmark. :func:`write_crops` saves them as PNG files, a folder
``tandem partition --calibration`` reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["photo_crops", "write_crops"]


def photo_crops(count: int, *, seed: int = 0, min_side: int = 96) -> list[np.ndarray]:
    """``count`` uint8 RGB crops ``[H, W, 3]`` of the bundled photos, each at least ``min_side`` pixels a side."""
    from tandem.models.efficientnet_lite import photos

    rng = np.random.default_rng(seed)
    sources = []
    for _, pixels in photos():
        image = np.asarray(pixels)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        sources.append(np.ascontiguousarray(image[:, :, :3]))
    crops = []
    for index in range(count):
        image = sources[index % len(sources)]
        rows, cols = image.shape[:2]
        side = int(rng.uniform(0.35, 1.0) * min(rows, cols))
        height = max(min_side, min(rows, int(side * rng.uniform(0.75, 1.33))))
        width = max(min_side, min(cols, side))
        top = int(rng.integers(0, rows - height + 1))
        left = int(rng.integers(0, cols - width + 1))
        crop = image[top : top + height, left : left + width]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(np.ascontiguousarray(crop))
    return crops


def write_crops(folder: Path, count: int, *, seed: int = 0) -> list[Path]:
    """Save :func:`photo_crops` as ``crop-NNN.png`` in ``folder``; return the paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, crop in enumerate(photo_crops(count, seed=seed)):
        path = folder / f"crop-{index:03d}.png"
        Image.fromarray(crop).save(path)
        paths.append(path)
    return paths
