"""The partitioner's config file (``tandem partition --config partition.yaml``).

Every key has a default, so an empty file (or none) is a valid config. See
``configs/partition.yaml`` for a commented example.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tandem.config import StrictModel
from tandem.partitioner.shapes import ShapeHints
from tandem.transport.codec import CodecSpec

__all__ = [
    "DEVICE_SPECS_DIR",
    "AccuracySettings",
    "Calibration",
    "CloudDevice",
    "Constraints",
    "EdgeDevice",
    "Fidelity",
    "ImagePreprocess",
    "InputShapes",
    "LinkAssumptions",
    "PartitionConfig",
    "Profiling",
    "SearchSettings",
    "Verification",
]


DEVICE_SPECS_DIR = Path(__file__).resolve().parent / "device_specs"


def check_spec_name(value: str) -> str:
    """``value`` when it names a shipped device spec or is the path of a spec file of one's own."""
    if value.endswith((".yaml", ".yml")) or "/" in value:
        return value
    known = sorted(path.stem for path in DEVICE_SPECS_DIR.glob("*.yaml"))
    if value in known:
        return value
    guess = difflib.get_close_matches(value, known, n=1)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    raise ValueError(f"unknown device spec; {hint}known: {', '.join(known)} (or the path of a spec .yaml file)")


class EdgeDevice(StrictModel):
    """Where edge node times come from.

    ``emulated``: measured on this machine, multiplied by the emulation
    factor: ``emulation_factor`` if given (edge time / this machine's time),
    else the roofline ratio of ``spec`` to the cloud's ``spec`` on this model,
    times the cloud's own factor when the cloud is emulated too. So by
    default the edge is ``spec``-vs-cloud-spec times slower than the cloud,
    which is this machine. ``measured``: this machine as it is.
    ``profile``: a profile file from ``tandem profile`` on the device.
    ``spec``: the roofline estimate for ``spec`` (a device never seen).
    """

    source: Literal["emulated", "measured", "profile", "spec"] = "emulated"
    spec: str = Field("orin_nano_8gb", min_length=1)
    profile: Path | None = None
    emulation_factor: float | None = Field(None, gt=0)
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    codec_time_scale: float = Field(1.0, gt=0, description="edge CPU encode time / this CPU's")

    _known_spec = field_validator("spec")(check_spec_name)

    @model_validator(mode="after")
    def _profile_given(self) -> EdgeDevice:
        if self.source == "profile" and self.profile is None:
            raise ValueError("source 'profile' needs a profile file (key 'profile' or --edge-profile)")
        return self


class CloudDevice(StrictModel):
    """Where cloud node times come from.

    ``measured``: this machine as it is (the default: the cloud part really
    runs here). ``emulated``: this machine's measured node times scaled so
    the whole model takes what the roofline estimate of ``spec`` says.
    ``profile``: a profile file. ``spec``: the roofline estimate of ``spec``.
    ``spec`` is also the reference for the edge's emulation factor.
    """

    source: Literal["measured", "emulated", "profile", "spec"] = "measured"
    spec: str = Field("a100_80gb_sxm", min_length=1)
    profile: Path | None = None
    precision: Literal["fp32", "fp16", "int8"] = "fp16"
    decode_time_scale: float = Field(1.0, gt=0, description="cloud CPU decode time / this CPU's")

    _known_spec = field_validator("spec")(check_spec_name)

    @model_validator(mode="after")
    def _profile_given(self) -> CloudDevice:
        if self.source == "profile" and self.profile is None:
            raise ValueError("source 'profile' needs a profile file (key 'profile' or --cloud-profile)")
        return self


class LinkAssumptions(StrictModel):
    """The links to choose a split for: each (uplink) bandwidth in Mbit/s, one round-trip time, a downlink."""

    bandwidths_mbps: list[float] = Field(default_factory=lambda: [1.0, 5.0, 20.0, 100.0, 1000.0], min_length=1)
    rtt_ms: float = Field(20.0, ge=0)
    downlink_mbps: float | None = Field(
        None, gt=0, description="cloud -> edge bandwidth the results travel on; unset: each link's own bandwidth"
    )

    @field_validator("bandwidths_mbps")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError("every bandwidth must be positive")
        return sorted(set(values))


class Constraints(StrictModel):
    """Limits a chosen split must meet; unset means no limit.

    ``max_mbps`` at ``fps`` inferences per second is a byte budget of
    ``max_mbps * 1e6 / 8 / fps`` per inference. ``max_edge_ms`` limits the
    edge's compute time. ``latency_slo_ms`` is checked: a choice over it is
    reported as missing the SLO.
    """

    max_bytes_per_inference: int | None = Field(None, gt=0)
    max_mbps: float | None = Field(None, gt=0)
    fps: float = Field(30.0, gt=0)
    max_edge_ms: float | None = Field(None, ge=0)
    latency_slo_ms: float | None = Field(None, gt=0)

    @property
    def byte_budget(self) -> int | None:
        """Bytes allowed on the wire per inference, from both byte limits."""
        budgets = []
        if self.max_bytes_per_inference is not None:
            budgets.append(self.max_bytes_per_inference)
        if self.max_mbps is not None:
            budgets.append(int(self.max_mbps * 1e6 / 8 / self.fps))
        return min(budgets) if budgets else None


class Profiling(StrictModel):
    """How node times and codecs are measured on this machine."""

    repetitions: int = Field(10, ge=1, description="timed runs per round")
    max_repetitions: int = Field(30, ge=1, description="more rounds until the median settles, up to this many runs")
    stable_within: float = Field(0.02, gt=0, description="the median has settled when a round moves it less")
    budget_s: float = Field(3.0, gt=0, description="seconds of timing after which it stops, settled or not")
    warmup: int = Field(2, ge=0)
    threads: int = Field(1, ge=0, description="ONNX Runtime intra-op threads; 0 lets ORT decide")
    codec_repetitions: int = Field(3, ge=1)


class Verification(StrictModel):
    """Tolerances for cloud(edge(x)) against the full model: max |diff| / max |full output|, per quantiser."""

    raw: float = Field(1e-5, gt=0)
    fp16: float = Field(1e-2, gt=0)
    int8: float = Field(1e-1, gt=0)
    max_samples: int = Field(32, ge=1, description="samples every kept split and codec is verified on")
    per_channel: bool = Field(
        True, description="where per-tensor int8 misses its tolerance at a split, offer int8@1 there if it passes"
    )
    in_graph: bool = Field(
        True,
        description="for fp16 and int8-static codecs, also export and verify each split's parts with the cast or "
        "Q/DQ inside the graphs (partitioner/in_graph.py)",
    )

    def tolerance(self, codec: str) -> float:
        """The tolerance for a codec's quantiser."""
        return float(getattr(self, CodecSpec.parse(codec).quantiser))


class AccuracySettings(StrictModel):
    """Task accuracy per split and codec, for models with labelled data (top-1 on held-out inputs)."""

    enabled: bool = True
    samples: int = Field(200, ge=1)
    max_drop: float = Field(0.01, ge=0, description="top-1 loss (0..1) a lossy codec may cost and stay verified")


class SearchSettings(StrictModel):
    """The bandwidth range swept for the Pareto front, and when brute force is affordable."""

    sweep_min_mbps: float = Field(0.1, gt=0)
    sweep_max_mbps: float = Field(10000.0, gt=0)
    brute_force_limit: int = Field(20000, ge=0, description="enumerate every split when there are at most this many")
    tie_within: float = Field(
        0.05, ge=0, description="latencies closer than this fraction of compute time (or the measured spread) tie"
    )
    bytes_quantile: float = Field(
        0.5, ge=0, le=1, description="quantile of per-sample wire bytes the cost model uses (0.95 for a latency SLO)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> SearchSettings:
        if self.sweep_min_mbps >= self.sweep_max_mbps:
            raise ValueError("sweep_min_mbps must be below sweep_max_mbps")
        return self


class InputShapes(StrictModel):
    """Sizes for input dims the model leaves open (``--input-shape`` and ``--dim`` on the command line).

    ``shapes`` maps an input name to its whole shape (``images: [1, 3, 640, 640]``);
    ``dims`` maps a dim name the model declares to a size (``height: 640``).
    """

    shapes: dict[str, list[int]] = Field(default_factory=dict)
    dims: dict[str, int] = Field(default_factory=dict)

    @field_validator("shapes")
    @classmethod
    def _shapes_positive(cls, values: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, shape in values.items():
            if not shape or any(d < 1 for d in shape):
                raise ValueError(f"input {name!r}: a shape is a non-empty list of sizes >= 1, got {shape}")
        return values

    @field_validator("dims")
    @classmethod
    def _dims_positive(cls, values: dict[str, int]) -> dict[str, int]:
        bad = {name: size for name, size in values.items() if size < 1}
        if bad:
            raise ValueError(f"dim sizes must be >= 1, got {bad}")
        return values

    def hints(self) -> ShapeHints:
        """These sizes as :class:`ShapeHints`."""
        return ShapeHints({n: tuple(s) for n, s in self.shapes.items()}, dict(self.dims))


class ImagePreprocess(StrictModel):
    """How a folder of images becomes model inputs; recorded in plan.yaml so edge and clients can repeat it.

    Each image is converted to RGB (or BGR), centre-cropped to the input's aspect ratio (``fit: crop``) or
    stretched (``fit: stretch``), resized bilinearly to the input's height and width, then
    ``(pixel * scale - mean) / std`` per channel, in the input's ``layout``.
    """

    input: str | None = Field(None, description="the input images feed; default: the model's only float input")
    fit: Literal["crop", "stretch"] = "crop"
    channels: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = Field(1.0 / 255.0, gt=0)
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0], min_length=3, max_length=3)
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0], min_length=3, max_length=3)

    @field_validator("std")
    @classmethod
    def _std_positive(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError("every std must be positive")
        return values


class Calibration(StrictModel):
    """A calibration set (``--calibration PATH``): real inputs for bytes, verification and fidelity.

    ``path`` is a folder of images (read with ``preprocess``), an ``.npz`` with one array per input
    (first axis: samples), or a folder of ``.npy`` files (``<input>.npy`` per input, or, for a
    one-input model, any ``*.npy``, each one or more samples). At most ``max_samples`` are used.
    """

    path: Path | None = None
    max_samples: int = Field(32, ge=1)
    preprocess: ImagePreprocess = Field(default_factory=ImagePreprocess)


class Fidelity(StrictModel):
    """Label-free fidelity of each split and codec against the unsplit model on the calibration samples.

    ``kinds`` maps an output name to ``classes`` (top-1 agreement, top-5 overlap), ``embedding``
    (cosine) or ``other`` (relative error p50/p99, arg-max agreement on the last axis); an output not
    named is guessed from its name and shape. A lossy codec whose fidelity is below ``min_fidelity``
    is not verified, so the agent never offers it.
    """

    kinds: dict[str, Literal["classes", "embedding", "other"]] = Field(default_factory=dict)
    min_fidelity: float | None = Field(None, ge=0, le=1)


class PartitionConfig(StrictModel):
    """Everything ``tandem partition`` needs besides the model."""

    edge: EdgeDevice = Field(default_factory=EdgeDevice)
    cloud: CloudDevice = Field(default_factory=CloudDevice)
    link: LinkAssumptions = Field(default_factory=LinkAssumptions)
    codecs: list[str] = Field(default_factory=lambda: ["raw", "fp16+lz4", "int8+zstd"], min_length=1)
    constraints: Constraints = Field(default_factory=Constraints)
    profiling: Profiling = Field(default_factory=Profiling)
    verification: Verification = Field(default_factory=Verification)
    search: SearchSettings = Field(default_factory=SearchSettings)
    accuracy: AccuracySettings = Field(default_factory=AccuracySettings)
    inputs: InputShapes = Field(default_factory=InputShapes)
    calibration: Calibration = Field(default_factory=Calibration)
    fidelity: Fidelity = Field(default_factory=Fidelity)

    @field_validator("codecs")
    @classmethod
    def _codecs(cls, values: list[str]) -> list[str]:
        # CodecSpec.parse raises a ValueError naming the bad codec; pydantic reports it under the key
        return list(dict.fromkeys(str(CodecSpec.parse(text)) for text in values))
