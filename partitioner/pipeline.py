"""The partitioner as named steps: load -> analyse -> profile -> costs -> search -> export -> choose -> plan.

:func:`partition` runs them all and writes a plan folder (see
:mod:`tandem.contracts.plan`); each step is a function of its own so tests and
benchmarks can run a part of the way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx.utils
from tqdm import tqdm

import tandem
from tandem.config import ConfigError
from tandem.contracts.plan import (
    PLAN_FILE,
    Artifact,
    Choice,
    CodecResult,
    ConstraintsInfo,
    DataInfo,
    DeviceInfo,
    InGraph,
    Int8Scales,
    LinkInfo,
    ModelInfo,
    Plan,
    Prediction,
    SearchInfo,
    SplitPlan,
    TensorDesc,
    artifact_for,
    save_plan,
)
from tandem.models.registry import get_reference, labelled_samples
from tandem.partitioner.config import PartitionConfig
from tandem.partitioner.costs import CostModel, Link, SplitCost, measure_codecs, seconds_per_byte
from tandem.partitioner.errors import PartitionError
from tandem.partitioner.export import (
    FULL_MODEL,
    CodecCheck,
    CodecScales,
    SplitParts,
    check_split,
    run_split,
    write_full_model,
    write_split,
)
from tandem.partitioner.fidelity import output_kind
from tandem.partitioner.graph import ModelGraph, analyse, sample_activations
from tandem.partitioner.in_graph import InGraphParts, check_in_graph, in_graph_key, write_in_graph
from tandem.partitioner.profiling import (
    DeviceProfile,
    OrtModel,
    emulation_factor,
    load_profile,
    profile_model,
    spec_times,
)
from tandem.partitioner.search import Limits, candidate_splits, choose, choose_with_ties, front
from tandem.partitioner.static_scales import calibrate_scales, saturating_bounds, static_axes
from tandem.transport.codec import CodecSpec, StaticScales

__all__ = [
    "DeviceTimes",
    "ExportedSplit",
    "ModelSource",
    "SearchOutcome",
    "analyse_model",
    "build_cost_model",
    "check_codecs",
    "check_out_dir",
    "choose_splits",
    "export_splits",
    "load_inputs",
    "load_source",
    "partition",
    "partition_graph",
    "profile_devices",
    "search_splits",
]

Say = Callable[[str], None]
PLOT_FILE = "latency.png"
THIS_MACHINE = f"this machine ({platform.machine()} CPU)"


def _quiet(_: str) -> None:
    return None


# --- load and analyse -----------------------------------------------------------------------------------------------


SYNTHETIC_NOTE = (
    "bytes, errors and fidelity come from ONE synthetic sample (random normal floats, ones for integers), "
    "not from real inputs; give --calibration PATH (images, .npz or .npy) for figures you can rely on"
)


@dataclass(frozen=True)
class ModelSource:
    """The ONNX file to partition, its name and sample inputs (None: generated from the input shapes)."""

    name: str
    path: Path
    samples: list[dict[str, np.ndarray]] | None
    reference: bool
    data: DataInfo | None = None


def load_inputs(path: Path) -> list[dict[str, np.ndarray]]:
    """Sample inputs from an ``.npz`` file holding one array per model input."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return [{name: np.asarray(data[name]) for name in data.files}]
    except FileNotFoundError:
        raise PartitionError(f"{path}: sample inputs file not found") from None
    except (OSError, ValueError) as exc:
        raise PartitionError(f"{path}: not a .npz file of input arrays: {exc}") from exc


def load_source(
    model: str,
    work_dir: Path,
    *,
    inputs: Path | None = None,
    config: PartitionConfig | None = None,
    say: Say = _quiet,
) -> ModelSource:
    """An ONNX path as it is, or a reference model by name exported into ``work_dir``, with its samples.

    Samples come from the calibration set (``config.calibration.path``), else ``inputs``, else a
    reference model's own inputs; else None (one synthetic sample is made at analysis).
    """
    config = config or PartitionConfig()
    samples = load_inputs(inputs) if inputs is not None else None
    path = Path(model)
    name, own = path.stem, None
    if not (path.suffix.lower() == ".onnx" or path.exists() or "/" in model):
        reference = get_reference(model)
        say(f"exporting reference model {model!r}: {reference.description}")
        exported = reference.export(work_dir / f"{model}.onnx", 1)
        name, path, own = model, exported.path, exported.sample_inputs
    calibration = config.calibration
    if calibration.path is not None and path.is_file():
        from tandem.partitioner.calibration import load_calibration

        proto = onnx.load(str(path), load_external_data=False)
        found = load_calibration(calibration.path, proto, calibration, config.inputs.hints())
        say(f"calibration set {found.source}: {len(found.samples)} samples ({found.kind})")
        data = DataInfo(
            source="calibration",
            samples=len(found.samples),
            path=str(calibration.path),
            kind=found.kind,
            preprocess=found.preprocess,
            note="bytes (p50, p95), worst errors and fidelity over the calibration samples",
        )
        return ModelSource(name, path, found.samples, own is not None, data)
    if samples is not None:
        data = DataInfo(source="inputs", samples=len(samples), path=str(inputs), note="one sample from --inputs")
    elif own is not None:
        samples = own
        data = DataInfo(source="reference", samples=len(own), note="the reference model's own sample inputs")
    else:
        data = DataInfo(source="synthetic", samples=1, note=SYNTHETIC_NOTE)
    return ModelSource(name, path, samples, own is not None, data)


def _holds_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def analyse_model(source: ModelSource, say: Say = _quiet, config: PartitionConfig | None = None) -> ModelGraph:
    """Load, check and analyse the model (see :func:`tandem.partitioner.graph.analyse`)."""
    hints = (config or PartitionConfig()).inputs.hints()
    graph = analyse(source.path, source.samples, hints)
    for note in graph.shape_notes:
        say(f"shape: {note}")
    control = [n for n in graph.model.graph.node if n.name in set(graph.node_names) and _holds_subgraph(n)]
    if control:
        ops = sorted({n.op_type for n in control})
        say(
            f"note: {len(control)} node(s) hold subgraphs ({', '.join(ops)}): each runs whole on one side, "
            "no cut falls inside one"
        )
    if graph.synthetic:
        say(f"NOTE: {SYNTHETIC_NOTE}")
    say(
        f"loaded {source.path}: opset {graph.opset}, {len(graph.nodes)} compute nodes "
        f"({len(graph.constant_nodes)} constant, {len(graph.dead_nodes)} dead left out), "
        f"{len(graph.tensors)} activations, inputs {list(graph.inputs)}, outputs {list(graph.outputs)}"
    )
    return graph


# --- node times -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceTimes:
    """One side's per-node seconds and where they came from."""

    info: DeviceInfo
    node_seconds: dict[str, float]


def _measured(profile: DeviceProfile, role: str) -> DeviceTimes:
    info = DeviceInfo(
        role=role,
        name=THIS_MACHINE,
        source="measured",
        detail=f"ONNX Runtime per-node medians of {profile.repetitions} runs on this machine, "
        f"{profile.threads} thread(s), spread {profile.spread:.1%}{'' if profile.stable else ' (not settled)'}",
        total_ms=profile.total_seconds * 1e3,
        provider=profile.provider,
        onnxruntime_version=profile.onnxruntime_version,
        spread=profile.spread,
        stable=profile.stable,
    )
    return DeviceTimes(info, dict(profile.node_seconds))


def _from_profile(graph: ModelGraph, path: Path, role: str) -> DeviceTimes:
    profile = load_profile(path, model_sha256=graph.sha256, model_name=graph.name)
    seconds = {name: profile.node_seconds.get(name, 0.0) for name in graph.node_names}
    info = DeviceInfo(
        role=role,
        name=profile.device_name,
        source="profile",
        detail=f"profile {path} measured on {profile.device_name} on {profile.created}",
        total_ms=sum(seconds.values()) * 1e3,
        provider=profile.provider,
        onnxruntime_version=profile.onnxruntime_version,
    )
    return DeviceTimes(info, seconds)


def _from_spec(graph: ModelGraph, spec_name: str, precision: str, role: str) -> DeviceTimes:
    spec, seconds = spec_times(graph, spec_name, precision)
    info = DeviceInfo(
        role=role,
        name=spec.name,
        source="spec",
        detail=f"roofline estimate for {spec.title} at {precision} (partitioner/devices.py)",
        total_ms=sum(seconds.values()) * 1e3,
    )
    return DeviceTimes(info, seconds)


def _emulated(measured: DeviceProfile, role: str, name: str, factor: float, factor_source: str) -> DeviceTimes:
    info = DeviceInfo(
        role=role,
        name=name,
        source="emulated",
        detail=f"this machine's measured node times x {factor:.4g} ({factor_source})",
        total_ms=measured.total_seconds * factor * 1e3,
        provider=measured.provider,
        onnxruntime_version=measured.onnxruntime_version,
        emulation_factor=factor,
        factor_source=factor_source,
        spread=measured.spread,
        stable=measured.stable,
    )
    return DeviceTimes(info, {n: s * factor for n, s in measured.node_seconds.items()})


def profile_devices(
    graph: ModelGraph,
    config: PartitionConfig,
    *,
    measured: DeviceProfile | None = None,
    progress: bool = True,
    say: Say = _quiet,
) -> tuple[DeviceTimes, DeviceTimes]:
    """Edge and cloud node times, as the config says (measuring here once if either side needs it)."""
    edge_cfg, cloud_cfg = config.edge, config.cloud
    if measured is None and (
        edge_cfg.source in ("emulated", "measured") or cloud_cfg.source in ("measured", "emulated")
    ):
        prof = config.profiling
        measured = profile_model(
            graph,
            THIS_MACHINE,
            repetitions=prof.repetitions,
            warmup=prof.warmup,
            threads=prof.threads,
            progress=progress,
            max_repetitions=prof.max_repetitions,
            stable_within=prof.stable_within,
            budget_s=prof.budget_s,
        )
        say(
            f"measured {graph.name} here: {measured.total_seconds * 1e3:.1f} ms per run "
            f"(median of {measured.repetitions}, spread {measured.spread:.1%}, "
            f"{'settled' if measured.stable else 'not settled within the budget'}, {prof.threads} thread(s))"
        )

    cloud_factor = 1.0
    if cloud_cfg.source == "emulated" and measured is not None:
        _, estimate = spec_times(graph, cloud_cfg.spec, cloud_cfg.precision)
        cloud_factor = sum(estimate.values()) / measured.total_seconds
        cloud = _emulated(
            measured,
            "cloud",
            cloud_cfg.spec,
            cloud_factor,
            f"roofline estimate of {cloud_cfg.spec} at {cloud_cfg.precision} for the whole model "
            "/ this machine's measured time",
        )
    elif cloud_cfg.source == "measured" and measured is not None:
        cloud = _measured(measured, "cloud")
    elif cloud_cfg.source == "profile" and cloud_cfg.profile is not None:
        cloud = _from_profile(graph, cloud_cfg.profile, "cloud")
    else:
        cloud = _from_spec(graph, cloud_cfg.spec, cloud_cfg.precision, "cloud")

    if edge_cfg.source == "measured" and measured is not None:
        edge = _measured(measured, "edge")
    elif edge_cfg.source == "emulated" and measured is not None:
        if edge_cfg.emulation_factor is not None:
            factor, factor_source = edge_cfg.emulation_factor, "config edge.emulation_factor"
        else:
            ratio = emulation_factor(graph, edge_cfg.spec, cloud_cfg.spec, edge_cfg.precision)
            factor = ratio * cloud_factor
            factor_source = (
                f"roofline estimate of {edge_cfg.spec} / {cloud_cfg.spec} on this model at {edge_cfg.precision}"
            )
            if cloud_cfg.source == "emulated":
                factor_source += f", times the cloud's factor {cloud_factor:.4g}"
        edge = _emulated(measured, "edge", edge_cfg.spec, factor, factor_source)
    elif edge_cfg.source == "profile" and edge_cfg.profile is not None:
        edge = _from_profile(graph, edge_cfg.profile, "edge")
    else:
        edge = _from_spec(graph, edge_cfg.spec, edge_cfg.precision, "edge")
    say(
        f"edge: {edge.info.name} [{edge.info.source}] {edge.info.total_ms:.2f} ms; "
        f"cloud: {cloud.info.name} [{cloud.info.source}] {cloud.info.total_ms:.2f} ms"
    )
    return edge, cloud


def _movable(graph: ModelGraph) -> dict[str, np.ndarray]:
    """The sample's value of every tensor that may cross a cut (each one with a consumer)."""
    return {name: graph.activations[name] for name, t in graph.tensors.items() if t.consumers}


def check_codecs(graph: ModelGraph, codecs: Sequence[str], *, source: str = "<config>") -> None:
    """Refuse a per-channel int8 codec (``int8@AXIS``) whose axis no floating tensor that may cross has.

    A tensor without the axis (0-d, 1-d) falls back to one scale per tensor, and the plan says so; a codec
    that would apply per channel to no tensor at all is a config mistake. Raises :class:`ConfigError`
    naming ``source``, the ``codecs`` key, the codec and the tensor ranks found.
    """
    floats = {name: array for name, array in _movable(graph).items() if array.dtype.kind == "f"}
    for text in codecs:
        axis = CodecSpec.parse(text).axis
        if axis is None or not floats:
            continue
        if not any(-array.ndim <= axis < array.ndim for array in floats.values()):
            name, array = max(floats.items(), key=lambda item: item[1].ndim)
            rank = array.ndim
            fix = f"an axis from {-rank} to {rank - 1}, or plain int8" if rank else "plain int8"
            raise ConfigError(
                source,
                [
                    f"codecs: value {text!r} is not valid for model {graph.name!r}: channel axis {axis} is out "
                    f"of range for every tensor that may cross a cut (largest: {name!r} of shape "
                    f"{list(array.shape)}); use {fix}"
                ],
            )


def static_scales(
    graph: ModelGraph, config: PartitionConfig, *, progress: bool = True
) -> dict[str, dict[str, StaticScales]]:
    """Calibrated scales for each ``int8-static`` codec (and its per-channel variant) over the samples.

    Every tensor that may cross a cut is calibrated on up to ``verification.max_samples`` samples, the same
    ones its bytes and errors are measured on; a tensor whose readers all saturate (Relu, Clip) is calibrated
    only over what they let through.
    """
    codecs = list(config.codecs)
    if config.verification.per_channel:
        codecs += [v for v in map(_per_channel, config.codecs) if v is not None]
    axes = static_axes(codecs)
    if not axes:
        return {}
    count = min(len(graph.samples), config.verification.max_samples)
    movable = [name for name, t in graph.tensors.items() if t.consumers]
    samples = tqdm(
        (sample_activations(graph, i) for i in range(count)),
        total=count, desc="calibrating int8-static scales", unit="sample", disable=not progress, leave=False,
    )  # fmt: skip
    by_axis = calibrate_scales(samples, movable, axes.values(), saturating_bounds(graph, movable))
    return {codec: by_axis[axis] for codec, axis in axes.items()}


def build_cost_model(
    graph: ModelGraph, config: PartitionConfig, edge: DeviceTimes, cloud: DeviceTimes, *, progress: bool = True
) -> CostModel:
    """Measure every codec on the samples' activations (bytes on each, times on the first); add node times."""
    count = min(len(graph.samples), config.verification.max_samples)
    movable = _movable(graph)
    scales = static_scales(graph, config, progress=progress)
    more = (sample_activations(graph, i) for i in range(1, count))  # measure_codecs reads the movable ones
    try:
        codecs = measure_codecs(
            movable,
            config.codecs,
            repetitions=config.profiling.codec_repetitions,
            progress=progress,
            more_samples=more,
            quantile=config.search.bytes_quantile,
            scales=scales,
        )
    except ValueError as exc:  # tandem.transport.codec refuses a tensor; name the config key
        raise PartitionError(f"codecs {config.codecs}: cannot encode the activations of {graph.name!r}: {exc}") from exc
    return CostModel(
        graph,
        edge.node_seconds,
        cloud.node_seconds,
        codecs,
        codec_time_scale=config.edge.codec_time_scale,
        decode_time_scale=config.cloud.decode_time_scale,
        downlink_mbps=config.link.downlink_mbps,
        spread=max(edge.info.spread or 0.0, cloud.info.spread or 0.0),
        scales=scales,
    )


# --- search ---------------------------------------------------------------------------------------------------------


@dataclass
class SearchOutcome:
    """Splits to keep (with reasons), the candidates each codec's choice ranges over, and exactness."""

    kept: dict[frozenset[str], list[str]]
    pool: dict[str, set[frozenset[str]]]
    exact: bool
    forced: frozenset[str] | None = None
    forced_cut: list[str] | None = None
    candidates: int = 0


def limits_of(config: PartitionConfig) -> Limits:
    """The config's constraints in seconds and bytes."""
    c = config.constraints
    return Limits(
        max_bytes=c.byte_budget,
        max_edge_s=None if c.max_edge_ms is None else c.max_edge_ms / 1e3,
        latency_slo_s=None if c.latency_slo_ms is None else c.latency_slo_ms / 1e3,
    )


def _links(config: PartitionConfig) -> list[Link]:
    return [Link(bw, config.link.rtt_ms / 1e3, config.link.downlink_mbps) for bw in config.link.bandwidths_mbps]


def search_splits(costs: CostModel, config: PartitionConfig, *, cut: Sequence[str] | None = None) -> SearchOutcome:
    """Pareto front per codec from the bandwidth sweep, the choice candidates, and the choice per link."""
    graph = costs.graph
    everything, nothing = graph.all_nodes, frozenset[str]()
    notes: dict[frozenset[str], dict[str, list[str]]] = {nothing: {}, everything: {}}

    def note(split: frozenset[str], kind: str, text: str) -> None:
        notes.setdefault(split, {}).setdefault(kind, []).append(text)

    limits = limits_of(config)
    forced: frozenset[str] | None = None
    if cut:
        forced = graph.cut_from_tensors(list(cut))
        note(forced, f"forced with --cut {' '.join(cut)}", "")
        pool: dict[str, set[frozenset[str]]] = {codec: {forced} for codec in costs.codec_names}
        exact = False
    else:
        sweep = config.search
        u_low, u_high = seconds_per_byte(sweep.sweep_max_mbps), seconds_per_byte(sweep.sweep_min_mbps)
        pool = {}
        exact = True
        for codec in costs.codec_names:
            pieces, pareto = front(costs, codec, u_low, u_high)
            for split in pareto:
                note(split, "on the Pareto front of edge time and bytes with", codec)
            for piece in pieces:
                if piece.edge_nodes in pareto:
                    note(
                        piece.edge_nodes,
                        "least latency before RTT with",
                        f"{codec} at {8 / piece.u_to / 1e6:.3g}-{8 / piece.u_from / 1e6:.3g} Mbit/s",
                    )
            pool[codec], codec_exact = candidate_splits(
                costs,
                codec,
                limits=limits,
                u_values=[link.seconds_per_byte for link in _links(config)],
                u_max=seconds_per_byte(1e-3),
                brute_force_limit=sweep.brute_force_limit,
            )
            exact = exact and codec_exact
    for link in _links(config):
        chosen = choose(costs, pool, link, limits)
        if chosen is None:
            raise PartitionError(_infeasible(graph.name, config))
        note(chosen.edge_nodes, "chosen (before verification) at", f"{link.bandwidth_mbps:g} Mbit/s")
    protected = {everything, nothing} | ({forced} if forced is not None else set())
    margin = max(costs.spread, config.search.tie_within)
    dropped = _within_spread(costs, list(notes), protected, config.link.rtt_ms / 1e3, margin)
    for split, by in dropped.items():
        notes.pop(split)
        note(by, "kept for", "a split within the measured spread of its compute time, sending no fewer bytes")
    kept = {split: _reasons(split, graph.all_nodes, found) for split, found in notes.items()}
    distinct = set().union(*pool.values()) | set(kept)
    return SearchOutcome(
        kept, pool, exact=exact, forced=forced, forced_cut=list(cut) if cut else None, candidates=len(distinct)
    )


def _dominates(costs: CostModel, a: frozenset[str], b: frozenset[str], rtt_s: float, margin: float) -> bool:
    """``a`` sends and returns no more bytes than ``b`` with every codec, and takes no longer within ``margin``."""
    if costs.result_bytes(a) > costs.result_bytes(b):
        return False
    link = Link(1.0, rtt_s)
    for codec in costs.codec_names:
        ca, cb = costs.cost(a, codec, link), costs.cost(b, codec, link)
        fixed_a = ca.total_s - ca.upload_s - ca.download_s  # compute, codec and RTT: what no link changes
        fixed_b = cb.total_s - cb.upload_s - cb.download_s
        if ca.wire_bytes > cb.wire_bytes or fixed_a > fixed_b + margin * (cb.edge_s + cb.cloud_s):
            return False
    return True


def _within_spread(
    costs: CostModel, splits: Sequence[frozenset[str]], protected: set[frozenset[str]], rtt_s: float, margin: float
) -> dict[frozenset[str], frozenset[str]]:
    """Splits another kept split matches within the measured spread: dropped -> the one kept for it.

    Taken in order of bytes, then edge nodes, so which of two near-equal splits stays does not depend on
    the noise in their times: repeated runs keep the same splits.
    """
    if margin <= 0:
        return {}

    def key(split: frozenset[str]) -> tuple[int, int, list[str]]:
        return (sum(costs.wire_bytes(split, c) for c in costs.codec_names), len(split), sorted(split))

    kept: list[frozenset[str]] = []
    dropped: dict[frozenset[str], frozenset[str]] = {}
    for split in sorted(splits, key=key):
        by = None if split in protected else next((k for k in kept if _dominates(costs, k, split, rtt_s, margin)), None)
        if by is None:
            kept.append(split)
        else:
            dropped[split] = by
    return dropped


def _reasons(split: frozenset[str], everything: frozenset[str], found: Mapping[str, list[str]]) -> list[str]:
    reasons = ["cloud-only"] if not split else ["edge-only"] if split == everything else []
    for kind, items in found.items():
        reasons.append(f"{kind} {', '.join(items)}".strip())
    return reasons


def _infeasible(name: str, config: PartitionConfig) -> str:
    c = config.constraints
    return (
        f"model {name!r}: no split meets the constraints (byte budget {c.byte_budget} bytes per inference, "
        f"edge time budget {c.max_edge_ms} ms); relax constraints in the config"
    )


# --- export, verify, accuracy ---------------------------------------------------------------------------------------


@dataclass
class ExportedSplit:
    """A kept split written to disk, with its verification error, fidelity and accuracy per codec."""

    split_id: str
    parts: SplitParts
    errors: dict[str, float]
    verified: dict[str, bool]
    accuracy: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, CodecCheck] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    in_graph: dict[str, InGraph] = field(default_factory=dict)


def _split_ids(costs: CostModel, splits: Sequence[frozenset[str]]) -> dict[frozenset[str], str]:
    everything = costs.graph.all_nodes
    ordered = sorted(splits, key=lambda s: (costs.edge_time(s), len(s)))
    ids: dict[frozenset[str], str] = {}
    number = 0
    for split in ordered:
        if not split:
            ids[split] = "cloud-only"
        elif split == everything:
            ids[split] = "edge-only"
        else:
            number += 1
            ids[split] = f"cut-{number:02d}"
    return ids


def _top1(
    parts: SplitParts,
    out_dir: Path,
    output: str,
    samples: Sequence[Mapping[str, np.ndarray]],
    labels: np.ndarray,
    codecs: Sequence[str],
    threads: int,
    scales: CodecScales,
) -> dict[str, float]:
    """Top-1 accuracy per codec of the graph output ``output`` (the edge merges both sides' outputs first).

    Scoring the model's own output by name, not the cloud part's first output: a forced cut's cloud part
    may return other tensors first (the digits bug: 200 labels for 600 predictions).
    """
    edge = OrtModel(out_dir / parts.edge_model, threads=threads) if parts.edge_model else None
    cloud = OrtModel(out_dir / parts.cloud_model, threads=threads) if parts.cloud_model else None
    scores = {}
    for codec in codecs:
        hits = 0
        for sample, label in zip(samples, labels, strict=True):
            scores_out = run_split(parts, edge, cloud, sample, codec, scales)[output]
            hits += int(np.argmax(scores_out.reshape(-1)) == int(label))
        scores[codec] = hits / len(samples)
    return scores


def _verify(
    item: SplitParts,
    graph: ModelGraph,
    out_dir: Path,
    config: PartitionConfig,
    samples: Sequence[Mapping[str, np.ndarray]],
    expected: Sequence[Mapping[str, np.ndarray]],
    codecs: Sequence[str] | None = None,
    scales: CodecScales | None = None,
) -> tuple[dict[str, CodecCheck], dict[str, bool], dict[str, str]]:
    """Every codec on every sample: the worst error against its tolerance, fidelity against min_fidelity."""
    codecs = list(config.codecs if codecs is None else codecs)
    output = graph.outputs[0]
    kind = output_kind(output, graph.tensors[output].shape, config.fidelity.kinds)
    checks = check_split(
        item, out_dir, samples, expected, codecs, config.verification.raw,
        threads=config.profiling.threads, output=output, kind=kind, scales=scales,
    )  # fmt: skip
    verified, rejected = {}, {}
    for codec in codecs:
        why = _rejection(checks[codec], config, codec)
        verified[codec] = why is None
        if why is not None:
            rejected[codec] = why
    return checks, verified, rejected


def _rejection(check: CodecCheck, config: PartitionConfig, codec: str) -> str | None:
    """Why ``codec`` may not be offered after ``check``: over its tolerance, or under min_fidelity; None if fine."""
    tolerance, minimum = config.verification.tolerance(codec), config.fidelity.min_fidelity
    if check.max_error > tolerance:
        return f"error {check.max_error:.3g} on sample {check.worst_sample} > tolerance {tolerance:g}"
    if minimum is not None and check.fidelity is not None and check.fidelity.value < minimum:
        return f"fidelity {check.fidelity.value:.4g} < min_fidelity {minimum:g}"
    return None


def _per_channel(codec: str) -> str | None:
    """``int8@1`` with the same compression for a per-tensor int8 codec; None for any other codec."""
    spec = CodecSpec.parse(codec)
    if spec.quantiser != "int8" or spec.axis is not None:
        return None
    return str(CodecSpec("int8", spec.compression, axis=1, static=spec.static))


def _ensure_codec(graph: ModelGraph, config: PartitionConfig, costs: CostModel, codec: str) -> None:
    """Measure ``codec`` on the samples' activations if the cost model has not (a per-channel variant)."""
    if codec in costs.codecs:
        return
    count = min(len(graph.samples), config.verification.max_samples)
    more = (sample_activations(graph, i) for i in range(1, count))
    measured = measure_codecs(
        _movable(graph), [codec], repetitions=config.profiling.codec_repetitions, progress=False,
        more_samples=more, quantile=config.search.bytes_quantile, scales=costs.scales,
    )  # fmt: skip
    costs.codecs[codec] = measured[codec]


def _try_per_channel(
    parts: SplitParts,
    graph: ModelGraph,
    costs: CostModel,
    out_dir: Path,
    config: PartitionConfig,
    samples: Sequence[Mapping[str, np.ndarray]],
    expected: Sequence[Mapping[str, np.ndarray]],
    verdict: tuple[dict[str, CodecCheck], dict[str, bool], dict[str, str]],
) -> None:
    """Where per-tensor int8 misses its tolerance here, check int8@1 and offer it if it passes (in place)."""
    checks, verified, rejected = verdict
    for codec in list(verified):
        variant = _per_channel(codec)
        if variant is None or verified[codec] or variant in verified or not rejected[codec].startswith("error"):
            continue
        _ensure_codec(graph, config, costs, variant)
        more = _verify(parts, graph, out_dir, config, samples, expected, [variant], costs.scales)
        checks[variant], verified[variant] = more[0][variant], more[1][variant]
        if variant in more[2]:
            rejected[variant] = more[2][variant]
        else:
            rejected[codec] += f"; {variant} (one scale per channel) passes and is offered instead"


def _export_in_graph(
    parts: SplitParts,
    graph: ModelGraph,
    costs: CostModel,
    out_dir: Path,
    config: PartitionConfig,
    samples: Sequence[Mapping[str, np.ndarray]],
    expected: Sequence[Mapping[str, np.ndarray]],
    verified: Mapping[str, bool],
    say: Say,
) -> dict[str, InGraph]:
    """Each verified fp16 / int8-static codec at a cut, exported with the codec inside the parts and verified."""
    if parts.edge_model in (None, FULL_MODEL) or parts.cloud_model in (None, FULL_MODEL):
        return {}
    assert parts.edge_model is not None and parts.cloud_model is not None
    candidates = [
        name
        for name in parts.crossing
        if name in parts.edge_model_outputs
        and name not in parts.edge_outputs
        and graph.tensors[name].dtype == "float32"
    ]
    output = graph.outputs[0]
    kind = output_kind(output, graph.tensors[output].shape, config.fidelity.kinds)
    by_key: dict[str, InGraph | None] = {}
    found = {}
    for codec, ok in verified.items():
        key = in_graph_key(codec)
        if key is None or not ok:
            continue
        if key not in by_key:
            pair = write_in_graph(
                out_dir, parts.split_id, parts.edge_model, parts.cloud_model, candidates, codec,
                costs.scales.get(codec, {}),
            )  # fmt: skip
            if isinstance(pair, str):
                say(f"split {parts.split_id}: no in-graph {key}: {pair}")
                by_key[key] = None
                continue
            check = check_in_graph(
                parts, pair, out_dir, samples, expected, threads=config.profiling.threads, output=output, kind=kind
            )
            by_key[key] = _in_graph_record(pair, check, config, codec)
        if (record := by_key[key]) is not None:
            found[codec] = record
    return found


def _in_graph_record(pair: InGraphParts, check: CodecCheck, config: PartitionConfig, codec: str) -> InGraph:
    rejected = _rejection(check, config, codec)
    return InGraph(
        edge_model=pair.edge_model,
        cloud_model=pair.cloud_model,
        tensors=list(pair.tensors),
        scales=_recorded_scales(pair.scales, pair.tensors) if pair.scales else None,
        max_error=check.max_error,
        worst_sample=check.worst_sample,
        fidelity=check.fidelity,
        verified=rejected is None,
        rejected=rejected,
    )


def export_splits(
    graph: ModelGraph,
    costs: CostModel,
    outcome: SearchOutcome,
    out_dir: Path,
    config: PartitionConfig,
    source: ModelSource,
    *,
    progress: bool = True,
    say: Say = _quiet,
) -> dict[frozenset[str], ExportedSplit]:
    """Write model.onnx and every kept split's parts; verify each with every codec on every sample (up to
    ``verification.max_samples``), measure fidelity, and accuracy if labelled."""
    write_full_model(graph, out_dir)
    ids = _split_ids(costs, list(outcome.kept))
    samples = graph.samples[: config.verification.max_samples]
    full = OrtModel(out_dir / FULL_MODEL, threads=config.profiling.threads)
    expected = [full.run(sample) for sample in samples]
    labelled = None
    if config.accuracy.enabled and source.reference:
        labelled = labelled_samples(source.name, config.accuracy.samples)
    extractor = onnx.utils.Extractor(graph.model)
    exported: dict[frozenset[str], ExportedSplit] = {}
    for split in tqdm(
        sorted(outcome.kept, key=lambda s: ids[s]), desc="exporting splits", unit="split", disable=not progress
    ):
        split_id = ids[split]
        parts = write_split(graph, split_id, split, out_dir, extractor)
        checks, verified, rejected = _verify(parts, graph, out_dir, config, samples, expected, scales=costs.scales)
        if config.verification.per_channel:
            _try_per_channel(parts, graph, costs, out_dir, config, samples, expected, (checks, verified, rejected))
        errors = {codec: check.max_error for codec, check in checks.items()}
        accuracy: dict[str, float] = {}
        if labelled is not None:
            accuracy = _top1(
                parts, out_dir, graph.outputs[0], labelled[0], labelled[1], ["raw", *config.codecs],
                config.profiling.threads, costs.scales,
            )  # fmt: skip
            for codec in config.codecs:
                if accuracy[codec] < accuracy["raw"] - config.accuracy.max_drop and verified[codec]:
                    verified[codec] = False
                    rejected[codec] = f"top-1 {accuracy[codec]:.3f} is more than {config.accuracy.max_drop} below raw"
        in_graph = {}
        if config.verification.in_graph:
            in_graph = _export_in_graph(parts, graph, costs, out_dir, config, samples, expected, verified, say)
        exported[split] = ExportedSplit(
            split_id, parts, errors, verified, accuracy, outcome.kept[split], checks, rejected, in_graph
        )
        passed = [c for c, ok in verified.items() if ok]
        say(
            f"split {split_id}: {len(split)} edge nodes, crossing {list(parts.crossing)[:4]}"
            f"{'...' if len(parts.crossing) > 4 else ''}; raw error {errors['raw']:.2g} over {len(samples)} "
            f"sample(s); verified codecs {passed}"
        )
    return exported


# --- choose and write the plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkChoice:
    """The verified choice on one link, with edge-only and cloud-only for comparison."""

    link: Link
    split: frozenset[str]
    codec: str
    cost: SplitCost
    meets_slo: bool | None
    edge_only: SplitCost
    cloud_only: tuple[str, SplitCost] | None
    ties: list[tuple[frozenset[str], str]] = field(default_factory=list)


def choose_splits(
    costs: CostModel, outcome: SearchOutcome, exported: Mapping[frozenset[str], ExportedSplit], config: PartitionConfig
) -> list[LinkChoice]:
    """For each configured link: the best exported split and verified codec within the constraints."""
    limits = limits_of(config)
    pool = {
        codec: [s for s in exported if outcome.forced is None or s == outcome.forced] for codec in costs.codec_names
    }

    def allowed(split: frozenset[str], codec: str) -> bool:
        return split in exported and exported[split].verified.get(codec, False)

    choices = []
    everything, nothing = costs.graph.all_nodes, frozenset[str]()
    for link in _links(config):
        margin = max(costs.spread, config.search.tie_within)
        found = choose_with_ties(costs, pool, link, limits, allowed, spread=margin)
        if found is None:
            raise PartitionError(_infeasible(costs.graph.name, config) + " with a verified codec")
        chosen, tied = found
        cloud_only = choose(costs, {c: [nothing] for c in costs.codec_names}, link, Limits(), allowed)
        choices.append(
            LinkChoice(
                link,
                chosen.edge_nodes,
                chosen.codec,
                chosen.cost,
                chosen.meets_slo,
                costs.cost(everything, costs.codec_names[0], link),
                None if cloud_only is None else (cloud_only.codec, cloud_only.cost),
                [(t.edge_nodes, t.codec) for t in tied],
            )
        )
    return choices


def _tensor(graph: ModelGraph, name: str) -> TensorDesc:
    tensor = graph.tensors[name]
    declared = graph.declared.get(name)
    open_dims = declared is not None and any(not isinstance(d, int) for d in declared)
    return TensorDesc(name=name, dtype=tensor.dtype, shape=list(tensor.shape), declared=declared if open_dims else None)


def _recorded_scales(
    scales: Mapping[str, StaticScales] | None, crossing: Sequence[str]
) -> dict[str, Int8Scales] | None:
    """The calibrated scales of the crossing tensors, as plan.yaml records them (None: not a static codec)."""
    if scales is None:
        return None
    return {
        name: Int8Scales(
            scale=list(found.scale), zero_point=list(found.zero_point), axis=found.axis, limits=found.limits
        )
        for name in crossing
        if (found := scales.get(name)) is not None
    }


def _split_plan(costs: CostModel, item: ExportedSplit, config: PartitionConfig) -> SplitPlan:
    graph, split, parts = costs.graph, item.parts.edge_nodes, item.parts
    kind = "cloud-only" if not split else "edge-only" if split == graph.all_nodes else "split"
    link0 = Link(1.0, config.link.rtt_ms / 1e3)
    results = []
    for codec in costs.codec_names:
        if codec not in item.verified:
            continue  # a per-channel variant tried at other splits only
        cost = costs.cost(split, codec, link0)
        p50, p95 = costs.bytes_quantiles(split, codec)
        check = item.checks.get(codec)
        results.append(
            CodecResult(
                codec=codec,
                wire_bytes=cost.wire_bytes,
                wire_bytes_p50=p50,
                wire_bytes_p95=p95,
                encode_ms=cost.encode_s * 1e3,
                decode_ms=cost.decode_s * 1e3,
                max_error=item.errors.get(codec),
                tolerance=config.verification.tolerance(codec),
                verified=item.verified[codec],
                accuracy=item.accuracy.get(codec),
                samples=None if check is None else check.samples,
                worst_sample=None if check is None else check.worst_sample,
                fidelity=None if check is None else check.fidelity,
                fallbacks=costs.fallbacks(split, codec),
                rejected=item.rejected.get(codec),
                scales=_recorded_scales(costs.scales.get(codec), parts.crossing),
                in_graph=item.in_graph.get(codec),
            )
        )
    predicted = [
        Prediction(
            bandwidth_mbps=link.bandwidth_mbps, codec=codec, latency_ms=costs.cost(split, codec, link).total_s * 1e3
        )
        for link in _links(config)
        for codec in costs.codec_names
        if item.verified.get(codec, False)
    ]
    return SplitPlan(
        id=item.split_id,
        kind=kind,
        edge_nodes=len(split),
        edge_model=parts.edge_model,
        cloud_model=parts.cloud_model,
        edge_inputs=list(parts.edge_inputs),
        crossing=[_tensor(graph, n) for n in parts.crossing],
        edge_outputs=list(parts.edge_outputs),
        cloud_outputs=list(parts.cloud_outputs),
        edge_ms=costs.edge_time(split) * 1e3,
        cloud_ms=costs.cloud_time(split) * 1e3,
        raw_bytes=costs.raw_bytes(split),
        result_bytes=costs.result_bytes(split),
        codecs=results,
        predicted=predicted,
        reasons=item.reasons,
    )


def build_plan(
    source: ModelSource,
    costs: CostModel,
    edge: DeviceTimes,
    cloud: DeviceTimes,
    outcome: SearchOutcome,
    exported: Mapping[frozenset[str], ExportedSplit],
    choices: Sequence[LinkChoice],
    config: PartitionConfig,
    artifacts: Sequence[Artifact],
    *,
    version: int = 1,
) -> Plan:
    """Assemble the :class:`Plan` (``version``: what plan.yaml records, validated like the file)."""
    graph = costs.graph
    splits = sorted(exported.values(), key=lambda item: (costs.edge_time(item.parts.edge_nodes), item.split_id))
    # The plan's identity: the model and the partition config, nothing measured. Partitioning the same model
    # with the same config again (a new release, --plan-version 2) keeps the id; versions tell releases apart.
    identity = hashlib.sha256()
    identity.update(graph.sha256.encode())
    identity.update(repr(config.model_dump(mode="json")).encode())
    c = config.constraints
    method = "s-t min cut (DADS), exact parametric bandwidth sweep per codec; Pareto front of edge time and bytes"
    if outcome.forced is not None:
        method = "cut forced with --cut; edge-only and cloud-only for comparison"
    elif limits_of(config).active:
        method += "; constraints applied " + (
            "over every split (all enumerated)" if outcome.exact else "over Lagrangian candidates (not proven optimal)"
        )
    sweep = config.search
    return Plan(
        plan_id=f"{source.name}-{identity.hexdigest()[:12]}",
        version=version,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        tandem_version=tandem.__version__,
        model=ModelInfo(
            name=source.name,
            sha256=graph.sha256,
            path=FULL_MODEL,
            opset=graph.opset,
            nodes=len(graph.nodes),
            inputs=[_tensor(graph, n) for n in graph.inputs],
            outputs=[_tensor(graph, n) for n in graph.outputs],
            shape_notes=list(graph.shape_notes),
        ),
        edge=edge.info,
        cloud=cloud.info,
        link=LinkInfo(
            bandwidths_mbps=list(config.link.bandwidths_mbps),
            rtt_ms=config.link.rtt_ms,
            downlink_mbps=config.link.downlink_mbps,
        ),
        codecs=list(costs.codec_names),
        constraints=ConstraintsInfo(
            max_bytes_per_inference=c.byte_budget, max_edge_ms=c.max_edge_ms, latency_slo_ms=c.latency_slo_ms
        ),
        search=SearchInfo(
            method=method,
            exact=outcome.exact,
            sweep_mbps=[sweep.sweep_min_mbps, sweep.sweep_max_mbps],
            candidates=outcome.candidates,
            forced_cut=outcome.forced_cut,
        ),
        splits=[_split_plan(costs, item, config) for item in splits],
        choices=[
            Choice(
                bandwidth_mbps=ch.link.bandwidth_mbps,
                split=exported[ch.split].split_id,
                codec=ch.codec,
                latency_ms=ch.cost.total_s * 1e3,
                wire_bytes=ch.cost.wire_bytes,
                edge_only_ms=ch.edge_only.total_s * 1e3,
                cloud_only_ms=None if ch.cloud_only is None else ch.cloud_only[1].total_s * 1e3,
                cloud_only_codec=None if ch.cloud_only is None else ch.cloud_only[0],
                meets_slo=ch.meets_slo,
                tie_with=[f"{exported[split].split_id}/{codec}" for split, codec in ch.ties[:8]],
            )
            for ch in choices
        ],
        artifacts=list(artifacts),
        data=_data_info(source, graph, config),
    )


def _data_info(source: ModelSource, graph: ModelGraph, config: PartitionConfig) -> DataInfo:
    """The plan's data section: how many samples the figures really come from."""
    used = min(len(graph.samples), config.verification.max_samples)
    if source.data is None:
        kind = "synthetic" if graph.synthetic else "inputs"
        return DataInfo(source=kind, samples=used, note=SYNTHETIC_NOTE if graph.synthetic else "")
    return source.data.model_copy(update={"samples": used})


def check_out_dir(out_dir: str | Path, *, where: str = "out_dir") -> Path:
    """The plan folder as a path; a :class:`PartitionError` naming ``where`` if it exists and is not a folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PartitionError(f"{where} {out}: exists and is not a folder; give a folder for the plan (made if missing)")
    return out


def partition(
    model: str,
    out_dir: str | Path,
    config: PartitionConfig | None = None,
    *,
    cut: Sequence[str] | None = None,
    inputs: Path | None = None,
    calibration: Path | None = None,
    version: int = 1,
    config_source: str = "<config>",
    progress: bool = True,
    say: Say = _quiet,
) -> Plan:
    """Partition an ONNX file or a reference model (by name) and write the plan folder ``out_dir``.

    ``calibration`` (a calibration set, see :mod:`tandem.partitioner.calibration`) overrides the
    config's ``calibration.path``. ``version`` is recorded in plan.yaml; ``config_source`` names the
    config in error messages.
    """
    check_out_dir(out_dir)
    config = config or PartitionConfig()
    if calibration is not None:
        config = config.model_copy(
            update={"calibration": config.calibration.model_copy(update={"path": Path(calibration)})}
        )
    with tempfile.TemporaryDirectory(prefix="tandem-partition-") as work:
        source = load_source(model, Path(work), inputs=inputs, config=config, say=say)
        graph = analyse_model(source, say, config)
        return partition_graph(
            source, graph, out_dir, config, cut=cut, version=version, config_source=config_source,
            progress=progress, say=say,
        )  # fmt: skip


def partition_graph(
    source: ModelSource,
    graph: ModelGraph,
    out_dir: str | Path,
    config: PartitionConfig | None = None,
    *,
    cut: Sequence[str] | None = None,
    measured: DeviceProfile | None = None,
    version: int = 1,
    config_source: str = "<config>",
    progress: bool = True,
    say: Say = _quiet,
) -> Plan:
    """The steps after analysis: profile, price, search, export and verify, choose, plot, write the plan.

    ``measured`` is a profile of this machine to use instead of measuring again. A previous plan in
    ``out_dir`` (plan.yaml, model.onnx, splits/, the plot) is replaced once the search has succeeded;
    a folder this call created is removed again if it fails.
    """
    config = config or PartitionConfig()
    out = check_out_dir(out_dir)
    if version < 1:
        raise PartitionError(f"plan version {version} is not valid: a plan's version is an integer >= 1")
    if cut:
        graph.cut_from_tensors(list(cut))  # a bad cut fails before any profiling
    check_codecs(graph, config.codecs, source=config_source)
    created = not out.exists()
    try:
        return _profile_to_plan(source, graph, out, config, cut, measured, version, progress, say)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _profile_to_plan(
    source: ModelSource,
    graph: ModelGraph,
    out: Path,
    config: PartitionConfig,
    cut: Sequence[str] | None,
    measured: DeviceProfile | None,
    version: int,
    progress: bool,
    say: Say,
) -> Plan:
    from tandem.partitioner.plot import plot_plan

    edge, cloud = profile_devices(graph, config, measured=measured, progress=progress, say=say)
    costs = build_cost_model(graph, config, edge, cloud, progress=progress)
    outcome = search_splits(costs, config, cut=cut)
    say(
        f"search: {outcome.candidates} candidate splits priced, {len(outcome.kept)} kept "
        f"({'exact' if outcome.exact else 'not proven optimal under constraints'})"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN_FILE).unlink(missing_ok=True)
    shutil.rmtree(out / "splits", ignore_errors=True)
    exported = export_splits(graph, costs, outcome, out, config, source, progress=progress, say=say)
    choices = choose_splits(costs, outcome, exported, config)
    relative = [FULL_MODEL]
    for item in sorted(exported.values(), key=lambda item: item.split_id):
        relative += [p for p in (item.parts.edge_model, item.parts.cloud_model) if p and p != FULL_MODEL]
        relative += [p for pair in item.in_graph.values() for p in (pair.edge_model, pair.cloud_model)]
    draft = build_plan(source, costs, edge, cloud, outcome, exported, choices, config, [], version=version)
    plot_plan(draft, out / PLOT_FILE)
    relative.append(PLOT_FILE)
    plan = draft.model_copy(update={"artifacts": [artifact_for(out, rel) for rel in dict.fromkeys(relative)]})
    path = save_plan(plan, out)
    say(f"wrote {path} ({len(plan.splits)} splits) and {out / PLOT_FILE}")
    return plan
