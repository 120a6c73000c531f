"""Input shapes: which dims a model leaves open, and the sizes the user gives for them.

An ONNX input may declare a dim by name (``height``) or not at all. Profiling,
byte counts and verification all need one concrete shape, and a wrong guess
(a 1 for every open dim) profiles a different model. So :func:`resolve_shapes`
takes sizes only from the user (``--input-shape images=1x3x640x640``,
``--dim height=640``, config keys ``inputs.shapes`` / ``inputs.dims``) and
stops with :class:`MissingInputShape`, naming each input and dim and the flag
to use, when one is still open. The one default is an open *first* dim (the
batch), which becomes 1 and is said so in the plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx

from tandem.partitioner.errors import PartitionError

__all__ = [
    "MissingInputShape",
    "ShapeHints",
    "declared_shapes",
    "describe_dims",
    "parse_dim",
    "parse_input_shape",
    "resolve_shapes",
]

Dim = int | str | None


class MissingInputShape(PartitionError):
    """An input dim is open (symbolic or unknown) and no size was given for it, or a given size does not fit."""


@dataclass(frozen=True)
class ShapeHints:
    """Sizes the user gave: whole shapes per input name, and sizes per dim name."""

    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dims: Mapping[str, int] = field(default_factory=dict)


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``images=1x3x640x640`` as ``("images", (1, 3, 640, 640))``; a ValueError saying what is wrong."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims:
        raise ValueError(f"{text!r} is not NAME=DIMS; write it like images=1x3x640x640")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise ValueError(f"{text!r}: dims {dims!r} are not integers separated by 'x', like 1x3x640x640") from None
    if any(d < 1 for d in shape):
        raise ValueError(f"{text!r}: every dim must be >= 1")
    return name, shape


def parse_dim(text: str) -> tuple[str, int]:
    """``height=640`` as ``("height", 640)``; a ValueError saying what is wrong."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"{text!r} is not DIM_NAME=SIZE; write it like height=640")
    try:
        size = int(value)
    except ValueError:
        raise ValueError(f"{text!r}: size {value!r} is not an integer") from None
    if size < 1:
        raise ValueError(f"{text!r}: the size must be >= 1")
    return name, size


def declared_shapes(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """Each graph input's declared shape: an int, the dim's name, or None where the model says nothing."""
    initializers = {init.name for init in model.graph.initializer}
    shapes: dict[str, list[Dim]] = {}
    for info in model.graph.input:
        if info.name in initializers:
            continue
        dims: list[Dim] = []
        for d in info.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        shapes[info.name] = dims
    return shapes


def describe_dims(dims: list[Dim]) -> str:
    """A declared shape as text: ``[1, 3, 'height', ?]``."""
    return "[" + ", ".join("?" if d is None else repr(d) if isinstance(d, str) else str(d) for d in dims) + "]"


def _check_hints(declared: Mapping[str, list[Dim]], hints: ShapeHints, where: str) -> None:
    for name, shape in hints.shapes.items():
        if name not in declared:
            raise MissingInputShape(
                f"{where}: --input-shape names input {name!r}, which the model does not have; "
                f"its inputs: {', '.join(repr(n) for n in declared)}"
            )
        dims = declared[name]
        if len(shape) != len(dims):
            raise MissingInputShape(
                f"{where}: --input-shape {name}={'x'.join(map(str, shape))} has {len(shape)} dims, but input "
                f"{name!r} has {len(dims)}: {describe_dims(dims)}"
            )
        for index, (want, have) in enumerate(zip(dims, shape, strict=True)):
            if isinstance(want, int) and want != have:
                raise MissingInputShape(
                    f"{where}: --input-shape {name}={'x'.join(map(str, shape))}: dim {index} of input {name!r} "
                    f"is fixed at {want} in the model, not {have}"
                )
    names = {d for dims in declared.values() for d in dims if isinstance(d, str)}
    unknown = sorted(set(hints.dims) - names)
    if unknown:
        raise MissingInputShape(
            f"{where}: --dim names {', '.join(repr(n) for n in unknown)}, which no input declares; "
            f"named dims of this model: {', '.join(repr(n) for n in sorted(names)) or 'none'}"
        )


def resolve_shapes(
    model: onnx.ModelProto, hints: ShapeHints | None = None, *, where: str = "model"
) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """The concrete shape of every input, and notes on each open dim that was filled (and from where).

    Raises :class:`MissingInputShape` naming every input and dim still open, and the flags to give.
    """
    hints = hints or ShapeHints()
    declared = declared_shapes(model)
    _check_hints(declared, hints, where)
    shapes: dict[str, tuple[int, ...]] = {}
    notes: list[str] = []
    missing: list[str] = []
    for name, dims in declared.items():
        if name in hints.shapes:
            shapes[name] = tuple(hints.shapes[name])
            if any(not isinstance(d, int) for d in dims):
                notes.append(f"input {name!r} {describe_dims(dims)} at {list(shapes[name])} from --input-shape")
            continue
        concrete: list[int] = []
        open_dims: list[str] = []
        for index, dim in enumerate(dims):
            if isinstance(dim, int):
                concrete.append(dim)
            elif isinstance(dim, str) and dim in hints.dims:
                concrete.append(hints.dims[dim])
                notes.append(f"input {name!r} dim {index} {dim!r} = {hints.dims[dim]} from --dim")
            elif index == 0 and len(dims) > 1:
                concrete.append(1)
                notes.append(f"input {name!r} dim 0 {dim or '?'!r} (batch) = 1 by default")
            else:
                concrete.append(0)
                open_dims.append(f"dim {index}" + (f" {dim!r}" if dim else " (unnamed)"))
        if open_dims:
            example = "x".join(
                str(d) if isinstance(d, int) else "1" if i == 0 else f"<{d or 'size'}>" for i, d in enumerate(dims)
            )
            missing.append(f"  input {name!r} {describe_dims(dims)}: {', '.join(open_dims)} unknown; "
                           f"give --input-shape {name}={example}")  # fmt: skip
        shapes[name] = tuple(concrete)
    if missing:
        named = sorted({d for dims in declared.values() for d in dims if isinstance(d, str)} - set(hints.dims))
        dim_hint = f"; or --dim {named[-1]}=<size> per named dim (config inputs.dims)" if named else ""
        raise MissingInputShape(
            f"{where}: the model leaves input dims open and Tandem will not guess them:\n"
            + "\n".join(missing)
            + f"\n  (sizes to profile at; --input-shape is repeatable, config inputs.shapes{dim_hint}; "
            "or give real inputs with --calibration PATH)"
        )
    return shapes, notes
