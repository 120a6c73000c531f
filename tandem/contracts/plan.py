"""The partition plan: ``plan.yaml`` and the artifacts next to it, as the edge agent and the cloud hub read them.

A plan folder holds::

    plan.yaml                 this schema
    model.onnx                the full model (the edge's fallback; edge-only and cloud-only splits run it)
    splits/<id>/edge.onnx     graph inputs -> crossing tensors (+ graph outputs computed on the edge)
    splits/<id>/cloud.onnx    crossing tensors -> the other graph outputs
    latency.png               predicted latency against bandwidth

How a split runs: the edge feeds ``edge_inputs`` (a subset of the model's
inputs) to ``edge_model``; the tensors named in ``crossing`` are taken from
the model's inputs and the edge model's outputs, encoded with the codec, and
sent; the cloud feeds them to ``cloud_model`` and returns ``cloud_outputs``;
the edge merges them with ``edge_outputs`` (graph outputs it computed
itself). A side whose model is null runs nothing.

:meth:`SplitPlan.predict_ms` re-prices a split for any bandwidth and RTT, so
the agent can switch among the kept splits (the Pareto front of edge time
against bytes) when the link changes. :func:`load_plan` checks every
artifact's size and sha256 before anything is trusted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field

from tandem.config import ConfigError, StrictModel, load_config
from tandem.errors import TandemError
from tandem.hashing import file_sha256

__all__ = [
    "PLAN_FILE",
    "PLAN_FORMAT",
    "Artifact",
    "ArtifactError",
    "Choice",
    "CodecResult",
    "DataInfo",
    "DeviceInfo",
    "Fidelity",
    "InGraph",
    "Int8Scales",
    "LinkInfo",
    "ModelInfo",
    "Plan",
    "PlanError",
    "SearchInfo",
    "SplitPlan",
    "TensorDesc",
    "artifact_for",
    "load_plan",
    "save_plan",
]

PLAN_FILE = "plan.yaml"
FULL_MODEL_FILE = "model.onnx"  # the full model: the edge's fallback (partitioner/export.py writes it)
PLAN_FORMAT = "tandem-plan/1"


class PlanError(TandemError):
    """A plan folder is missing its plan, or the plan does not validate."""


class ArtifactError(PlanError):
    """An artifact named by the plan is missing, or its size or sha256 differs from the plan's."""


class PlanModel(StrictModel):
    """Base of the plan's sections: strict keys, immutable, field docstrings as descriptions."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class TensorDesc(PlanModel):
    """A tensor by name, dtype and shape."""

    name: str
    """Tensor name in the ONNX graph."""
    dtype: str
    """numpy dtype name: float32, int64, ..."""
    shape: list[int]
    """Shape on the sample input (batch included): the shape the plan was profiled at."""
    declared: list[int | str | None] | None = None
    """For a model input whose dims are open: its declared shape (a dim's name, or null where unnamed)."""


class ModelInfo(PlanModel):
    """The model the plan is for."""

    name: str
    """Reference model name or the ONNX file's stem."""
    sha256: str
    """sha256 of the ONNX file partitioned; device profiles name the model by it."""
    path: str
    """The full model inside the plan folder."""
    opset: int
    """Default-domain opset."""
    nodes: int
    """Compute nodes (constant nodes excluded)."""
    inputs: list[TensorDesc]
    """Graph inputs."""
    outputs: list[TensorDesc]
    """Graph outputs."""
    shape_notes: list[str] = Field(default_factory=list)
    """How each open input dim got the size it was profiled at (flag, dim name, sample inputs)."""


class DataInfo(PlanModel):
    """The inputs bytes, verification and fidelity were measured on."""

    source: Literal["synthetic", "calibration", "inputs", "reference"]
    """synthetic: one random sample; calibration: --calibration; inputs: --inputs; reference: the model's own."""
    samples: int
    """Samples every kept split and codec was verified on (and its bytes measured on)."""
    path: str | None = None
    """The calibration set or inputs file, as given."""
    kind: str | None = None
    """images, npz or npy (calibration only)."""
    preprocess: dict[str, Any] | None = None
    """For images: input, height, width, fit, channels, layout, scale, mean, std, so clients can repeat it."""
    note: str = ""
    """What the figures can be trusted for, in words."""


class DeviceInfo(PlanModel):
    """Where one side's node times came from."""

    role: Literal["edge", "cloud"]
    """Which side."""
    name: str
    """Device name: a spec name, a profile's device name, or this machine."""
    source: Literal["measured", "emulated", "profile", "spec"]
    """measured here; measured here and scaled (emulated); a profile file; a roofline estimate from a spec."""
    detail: str
    """One line saying how the times were obtained."""
    total_ms: float
    """Whole-model time on this device under this source."""
    provider: str | None = None
    """ONNX Runtime execution provider of the measurement, if measured."""
    onnxruntime_version: str | None = None
    """ONNX Runtime version of the measurement, if measured."""
    emulation_factor: float | None = None
    """Factor applied to this machine's times to emulate the device (emulated only)."""
    factor_source: str | None = None
    """Where the emulation factor came from."""
    spread: float | None = None
    """(p75 - p25) / median of repeated whole-model times (measured, emulated): below it, latencies tie."""
    stable: bool | None = None
    """Whether the median settled before the run or time budget ran out (measured, emulated)."""


class LinkInfo(PlanModel):
    """The link assumptions the choices were made for."""

    bandwidths_mbps: list[float]
    """Bandwidths a split was chosen for, Mbit/s."""
    rtt_ms: float
    """Round-trip time, ms."""
    downlink_mbps: float | None = None
    """Bandwidth results travel back on, Mbit/s (null: the same as each uplink bandwidth)."""


class ConstraintsInfo(PlanModel):
    """Constraints applied to the choices (null: none)."""

    max_bytes_per_inference: int | None
    """Byte budget on the wire per inference."""
    max_edge_ms: float | None
    """Edge compute budget per inference, ms."""
    latency_slo_ms: float | None
    """Latency objective; choices say whether they meet it."""


class SearchInfo(PlanModel):
    """How the splits were found."""

    method: str
    """Search method, in words."""
    exact: bool
    """Whether the choices are provably optimal among all splits (for the cost model)."""
    sweep_mbps: list[float]
    """Bandwidth range swept for the Pareto front, Mbit/s."""
    candidates: int
    """Distinct splits priced."""
    forced_cut: list[str] | None = None
    """Tensors of a cut forced with --cut, if any."""


class Fidelity(PlanModel):
    """Agreement of cloud(edge(x)) with the unsplit model on the calibration samples, without labels."""

    output: str
    """The graph output scored (the first one)."""
    kind: Literal["classes", "embedding", "other"]
    """classes: top-1 agreement and top-5 overlap; embedding: cosine; other: relative error and arg-max."""
    value: float
    """The figure min_fidelity is checked against: top-1 agreement, mean cosine, or arg-max agreement (0..1)."""
    samples: int
    """Samples scored."""
    top5_overlap: float | None = None
    """Mean |top-5 ∩ unsplit top-5| / 5 (classes)."""
    cosine_min: float | None = None
    """Worst row's cosine (embedding)."""
    rel_err_p50: float | None = None
    """Median over elements and samples of |got - full| / max |full| (other)."""
    rel_err_p99: float | None = None
    """99th percentile of the same (other)."""


class Int8Scales(PlanModel):
    """Calibrated int8 scales of one crossing tensor (``int8-static`` codecs): ``q = round(x / scale) + zero_point``."""

    scale: list[float]
    """One scale, or one per channel along ``axis``."""
    zero_point: list[int]
    """Zero points, as many as scales, in [-128, 127]."""
    axis: int | None = None
    """Channel axis; null for one scale per tensor."""
    limits: tuple[float | None, float | None] = (None, None)
    """What the tensor's readers let through (a ReLU6: [0, 6]); a message beyond the calibrated range but
    within these gets its scales widened, values beyond them are clipped (the readers clip them anyway)."""


class InGraph(PlanModel):
    """A split's parts with the codec inside: the edge part ends in the cast / QuantizeLinear, the cloud part
    starts with the matching cast / DequantizeLinear (partitioner/in_graph.py). Verified on the same samples."""

    edge_model: str
    """Edge part whose crossing outputs are already float16 / int8, in the plan folder."""
    cloud_model: str
    """Cloud part that takes them as such."""
    tensors: list[str]
    """The crossing tensors quantised in the graphs (the others travel as the codec sends them)."""
    scales: dict[str, Int8Scales] | None = None
    """int8: each tensor's symmetric (zero point 0) scales, from the calibrated range."""
    max_error: float
    """Worst relative error against the full model over the samples."""
    worst_sample: int
    """Sample giving max_error."""
    fidelity: Fidelity | None = None
    """Agreement with the unsplit model."""
    verified: bool
    """Within the codec's tolerance and min_fidelity: the agent may run it."""
    rejected: str | None = None
    """Why not, when not verified."""


class CodecResult(PlanModel):
    """One codec on one split: bytes, codec times and the verified error."""

    codec: str
    """Codec text, as tandem.transport.codec.CodecSpec.parse reads it."""
    wire_bytes: int
    """Bytes sent edge -> cloud per inference, the cost model's quantile (search.bytes_quantile) over the samples."""
    wire_bytes_p50: int | None = None
    """Median over the samples of the bytes sent per inference."""
    wire_bytes_p95: int | None = None
    """95th percentile over the samples."""
    encode_ms: float
    """Encode time of the crossing tensors on the edge, ms."""
    decode_ms: float
    """Decode time in the cloud, ms."""
    max_error: float | None
    """max |cloud(edge(x)) - full(x)| / max |full(x)| over the sample inputs; null if not verified."""
    tolerance: float
    """Tolerance for this codec."""
    verified: bool
    """max_error is within tolerance: the agent may use this codec on this split."""
    accuracy: float | None = None
    """Task metric with this split and codec, when measured."""
    samples: int | None = None
    """Samples verified on."""
    worst_sample: int | None = None
    """Index of the sample giving max_error."""
    fidelity: Fidelity | None = None
    """Agreement with the unsplit model on the samples (label-free)."""
    fallbacks: list[str] = Field(default_factory=list)
    """Crossing tensors this codec sends otherwise (raw, per-tensor int8) and why."""
    rejected: str | None = None
    """Why the codec is not verified, when it is not."""
    scales: dict[str, Int8Scales] | None = None
    """int8-static codecs: each crossing tensor's calibrated scales (the edge quantises with these)."""
    in_graph: InGraph | None = None
    """The same codec computed inside the parts, where exported (fp16, int8-static at a cut)."""


class Prediction(PlanModel):
    """Predicted latency of a split and codec on one link."""

    bandwidth_mbps: float
    """Link bandwidth, Mbit/s."""
    codec: str
    """Codec."""
    latency_ms: float
    """Predicted end-to-end latency, ms."""


class SplitPlan(PlanModel):
    """One kept split: what runs where, what crosses, and what it costs."""

    id: str
    """Split id, also its folder under splits/."""
    kind: Literal["cloud-only", "edge-only", "split"]
    """cloud-only runs nothing on the edge, edge-only nothing in the cloud."""
    edge_nodes: int
    """Number of compute nodes on the edge."""
    edge_model: str | None
    """Edge sub-model in the plan folder; null for cloud-only."""
    cloud_model: str | None
    """Cloud sub-model in the plan folder; null for edge-only."""
    edge_inputs: list[str]
    """Graph inputs the edge model takes."""
    crossing: list[TensorDesc]
    """Tensors sent edge -> cloud: graph inputs the cloud reads, then edge model outputs."""
    edge_outputs: list[str]
    """Graph outputs computed on the edge; they stay there."""
    cloud_outputs: list[str]
    """Graph outputs the cloud computes and returns."""
    edge_ms: float
    """Edge compute time, ms."""
    cloud_ms: float
    """Cloud compute time, ms."""
    raw_bytes: int
    """Crossing bytes in their own dtypes."""
    result_bytes: int
    """Bytes the cloud returns (raw)."""
    codecs: list[CodecResult]
    """Per-codec bytes, times and verification."""
    predicted: list[Prediction]
    """Predicted latency for each configured bandwidth and verified codec."""
    reasons: list[str]
    """Why the split is in the plan."""

    def codec(self, codec: str) -> CodecResult:
        """This split's figures for ``codec``."""
        for result in self.codecs:
            if result.codec == codec:
                return result
        raise KeyError(f"split {self.id!r} has no figures for codec {codec!r}")

    def predict_ms(self, codec: str, bandwidth_mbps: float, rtt_ms: float, downlink_mbps: float | None = None) -> float:
        """Predicted latency on any link, from the plan's cost terms (results on ``downlink_mbps`` if given)."""
        if self.kind == "edge-only":
            return self.edge_ms
        figures = self.codec(codec)
        ms_per_byte = 8.0 / (bandwidth_mbps * 1e6) * 1e3
        down_ms_per_byte = 8.0 / ((downlink_mbps or bandwidth_mbps) * 1e6) * 1e3
        return (
            self.edge_ms
            + figures.encode_ms
            + figures.wire_bytes * ms_per_byte
            + rtt_ms
            + figures.decode_ms
            + self.cloud_ms
            + self.result_bytes * down_ms_per_byte
        )


class Choice(PlanModel):
    """The split chosen for one bandwidth, with edge-only and cloud-only for comparison."""

    bandwidth_mbps: float
    """Link bandwidth, Mbit/s."""
    split: str
    """Chosen split id."""
    codec: str
    """Chosen codec."""
    latency_ms: float
    """Predicted latency, ms."""
    wire_bytes: int
    """Bytes on the wire per inference."""
    edge_only_ms: float
    """Predicted latency of edge-only, ms."""
    cloud_only_ms: float | None
    """Predicted latency of cloud-only with its best verified codec, ms (null if no codec is allowed)."""
    cloud_only_codec: str | None
    """That codec."""
    meets_slo: bool | None
    """Whether latency_ms is within the SLO (null: no SLO)."""
    tie_with: list[str] = Field(default_factory=list)
    """Other split/codec pairs within the measured spread of this one's latency (the table marks them ≈);
    among them the plan took the one sending fewest bytes."""


class Artifact(PlanModel):
    """A file of the plan folder, checked on load."""

    path: str
    """Path relative to the plan folder."""
    bytes: int
    """File size."""
    sha256: str
    """sha256 of the file."""


class Plan(PlanModel):
    """A partition plan (see the module docstring)."""

    format: str = PLAN_FORMAT
    """Format tag."""
    plan_id: str
    """Identifier: model name and a hash of the plan's content."""
    version: int = Field(1, ge=1)
    """Version of the plan, set with `tandem partition --plan-version`; the hub publishes it and agents report it."""
    created: str
    """UTC creation time, ISO 8601."""
    tandem_version: str
    """Tandem version that wrote the plan."""
    model: ModelInfo
    """The model."""
    edge: DeviceInfo
    """Edge device times."""
    cloud: DeviceInfo
    """Cloud device times."""
    link: LinkInfo
    """Link assumptions."""
    codecs: list[str]
    """Codecs considered."""
    constraints: ConstraintsInfo
    """Constraints applied."""
    search: SearchInfo
    """How the splits were found."""
    splits: list[SplitPlan] = Field(min_length=1)
    """Kept splits, by increasing edge time."""
    choices: list[Choice]
    """Chosen split per bandwidth."""
    artifacts: list[Artifact]
    """Every file of the plan besides plan.yaml."""
    data: DataInfo | None = None
    """The inputs bytes, errors and fidelity come from."""

    def cloud_only_files(self) -> set[str]:
        """Artifacts only the cloud runs: each split's cloud part that is not also the full model or an edge part.

        An edge never needs them; the hub leaves them out of what it announces to edges.
        """
        in_graph = [c.in_graph for split in self.splits for c in split.codecs if c.in_graph is not None]
        cloud = {split.cloud_model for split in self.splits if split.cloud_model} | {p.cloud_model for p in in_graph}
        edge = {split.edge_model for split in self.splits if split.edge_model} | {FULL_MODEL_FILE}
        edge |= {p.edge_model for p in in_graph}
        return {path for path in cloud - edge if path is not None}

    def split(self, split_id: str) -> SplitPlan:
        """The kept split with this id."""
        for split in self.splits:
            if split.id == split_id:
                return split
        raise KeyError(f"plan {self.plan_id!r} has no split {split_id!r}; splits: {[s.id for s in self.splits]}")

    def best_for(self, bandwidth_mbps: float, rtt_ms: float | None = None) -> tuple[SplitPlan, str, float]:
        """The kept split and verified codec of least predicted latency on a link (for run-time switching).

        The plan's constraints are not applied here: the caller knows its own budgets at run time.
        """
        rtt = self.link.rtt_ms if rtt_ms is None else rtt_ms
        best: tuple[float, SplitPlan, str] | None = None
        for split in self.splits:
            for result in split.codecs:
                if not result.verified:
                    continue
                latency = split.predict_ms(result.codec, bandwidth_mbps, rtt)
                if best is None or latency < best[0]:
                    best = (latency, split, result.codec)
        if best is None:
            raise PlanError(f"plan {self.plan_id!r}: no split has a verified codec")
        return best[1], best[2], best[0]


def artifact_for(folder: Path, relative: str) -> Artifact:
    """An :class:`Artifact` entry for a file in the plan folder."""
    path = folder / relative
    return Artifact(path=relative, bytes=path.stat().st_size, sha256=file_sha256(path))


def save_plan(plan: Plan, folder: str | Path) -> Path:
    """Write ``plan.yaml`` into ``folder``; return its path."""
    path = Path(folder) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False, width=120, default_flow_style=None)
    path.write_text(f"# Tandem partition plan for {plan.model.name}; see tandem/contracts/plan.py\n{text}", "utf-8")
    return path


def load_plan(folder: str | Path, *, verify: bool = True, for_edge: bool = False) -> Plan:
    """Read ``plan.yaml`` from ``folder`` and (with ``verify``) check every artifact's size and sha256.

    ``for_edge``: the folder is an edge's copy, which holds no cloud-only part
    (:meth:`Plan.cloud_only_files`); those are not checked.
    """
    folder = Path(folder)
    path = folder / PLAN_FILE
    if not folder.is_dir():
        raise PlanError(f"{folder}: plan folder not found")
    if not path.is_file():
        raise PlanError(f"{path}: no plan in this folder (run `tandem partition MODEL --out {folder}`)")
    try:
        plan = load_config(path, Plan)
    except ConfigError as exc:
        raise PlanError(str(exc)) from exc
    if plan.format != PLAN_FORMAT:
        raise PlanError(f"{path}: format {plan.format!r} is not {PLAN_FORMAT!r}")
    if verify:
        skipped = plan.cloud_only_files() if for_edge else set()
        for artifact in plan.artifacts:
            if artifact.path not in skipped:
                check_artifact(folder, artifact)
    return plan


def check_artifact(folder: Path, artifact: Artifact) -> None:
    """Raise :class:`ArtifactError` if the file is missing or its size or sha256 differs from the plan."""
    relative = Path(artifact.path)
    if relative.is_absolute() or ".." in relative.parts:
        raise ArtifactError(f"{folder / PLAN_FILE}: artifact path {artifact.path!r} leaves the plan folder")
    path = folder / relative
    if not path.is_file():
        raise ArtifactError(f"{path}: artifact missing (the plan lists {artifact.path!r})")
    size = path.stat().st_size
    if size != artifact.bytes:
        raise ArtifactError(f"{path}: artifact corrupted: {size} bytes, the plan says {artifact.bytes}")
    digest = file_sha256(path)
    if digest != artifact.sha256:
        raise ArtifactError(
            f"{path}: artifact corrupted: sha256 {digest[:16]}... differs from the plan's {artifact.sha256[:16]}..."
        )
