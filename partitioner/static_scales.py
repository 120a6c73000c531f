"""Calibrated int8 scales (the ``int8-static`` codecs): each crossing tensor's range over the calibration set.

The per-message int8 codec takes every message's own min and max; ``int8-static``
takes them once, over the calibration samples, and the plan records them per
split and crossing tensor (``CodecResult.scales``). Where the set covers the
inputs the edge will see, static scales cost nothing per message, let an
exported edge part end in ``QuantizeLinear`` (see
:mod:`tandem.partitioner.in_graph`), and for a tensor whose values lie on a
grid (an image's pixels) reproduce that grid exactly. Values beyond the
calibrated range saturate: that cost is what verification on the same samples
measures and records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tandem.transport.codec import CodecSpec, StaticScales

__all__ = ["calibrate_scales", "static_axes"]


def static_axes(codecs: Sequence[str]) -> dict[str, int | None]:
    """The ``int8-static`` codecs among ``codecs``, each with its channel axis (None: one scale per tensor)."""
    found = {}
    for text in codecs:
        spec = CodecSpec.parse(text)
        if spec.static:
            found[str(spec)] = spec.axis
    return found


def calibrate_scales(
    samples: Iterable[Mapping[str, np.ndarray]], names: Sequence[str], axes: Iterable[int | None]
) -> dict[int | None, dict[str, StaticScales]]:
    """Per channel axis asked for, the scales of every floating tensor in ``names`` over all ``samples``.

    A tensor without the axis (0-d, 1-d) gets one scale, as the per-message codec gives it; a tensor that is
    not floating or never finite gets none (it travels raw). Non-finite samples of a tensor are left out of its
    range (that message falls back to raw when sent).
    """
    wanted = list(dict.fromkeys(axes))
    low: dict[tuple[int | None, str], np.ndarray] = {}
    high: dict[tuple[int | None, str], np.ndarray] = {}
    resolved: dict[tuple[int | None, str], int | None] = {}
    for sample in samples:
        for name in names:
            array = np.asarray(sample[name])
            if array.dtype.kind != "f" or not array.size or not np.isfinite(array).all():
                continue
            for axis in wanted:
                key = (axis, name)
                resolved[key] = _axis_for(axis, array.ndim)
                lo, hi = _range(array, resolved[key])
                low[key] = lo if key not in low else np.minimum(low[key], lo)
                high[key] = hi if key not in high else np.maximum(high[key], hi)
    found: dict[int | None, dict[str, StaticScales]] = {axis: {} for axis in wanted}
    for (axis, name), lo in low.items():
        found[axis][name] = StaticScales.from_range(lo, high[(axis, name)], resolved[(axis, name)])
    return found


def _axis_for(axis: int | None, ndim: int) -> int | None:
    return axis if axis is not None and -ndim <= axis < ndim else None


def _range(array: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    if axis is None:
        return np.asarray(array.min(), np.float32), np.asarray(array.max(), np.float32)
    others = tuple(i for i in range(array.ndim) if i != axis % array.ndim)
    return array.min(axis=others).astype(np.float32), array.max(axis=others).astype(np.float32)
