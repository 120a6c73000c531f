"""Partitioner: does the split the plan chooses hold up when it is run?

For every reference model, the partitioner writes a plan; then every kept split, and a few other cuts through the
graph ("probes") that the plan did not keep, is really run here: the edge part with ONNX Runtime, the crossing
tensors encoded with each codec and decoded, the cloud part with ONNX Runtime. The network is emulated by
arithmetic: ``(bytes up + result bytes) * 8 / bandwidth + RTT``. The end-to-end latency of each (split, codec) at
each bandwidth is then compared with the one the plan chose.

THE EDGE IS EMULATED BY SCALING: nothing runs on a Jetson. Two emulations are measured from the same runs:

- ``cpu-cloud`` (the partitioner's default): the cloud part's time is this CPU's as measured; the edge part's is this
  CPU's multiplied by the roofline ratio orin_nano_8gb / a100_80gb_sxm on the model.
- ``spec-scaled``: both sides are this CPU's times scaled so that the whole model takes what the roofline estimate of
  each device says (millisecond compute, so the network weighs more).

Targets: at every bandwidth the chosen split is within 5% of the best measured (split, codec), and never worse than
edge-only or cloud-only as measured (beyond a 2% noise band; the strict ratios are in the results too).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tandem.contracts.plan import Plan
from tandem.models.registry import get_reference
from tandem.partitioner.config import PartitionConfig
from tandem.partitioner.export import SplitParts, verify_split, write_split
from tandem.partitioner.graph import ModelGraph
from tandem.partitioner.pipeline import THIS_MACHINE, ModelSource, analyse_model, partition_graph
from tandem.partitioner.profiling import OrtModel, profile_model
from tandem.transport.codec import CodecSpec, decode_tensor, encode_tensor

BANDWIDTHS = [1.0, 5.0, 20.0, 100.0, 1000.0]
RTT_MS = 20.0
CODECS = ["raw", "fp16+lz4", "int8+zstd"]
MODES: dict[str, dict[str, Any]] = {
    "cpu-cloud": {"edge": {"source": "emulated"}, "cloud": {"source": "measured"}},
    "spec-scaled": {"edge": {"source": "emulated"}, "cloud": {"source": "emulated"}},
}
PROBE_FRACTIONS = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)
# "Not worse" allows this much: the noise of medians on a shared 2-core machine (the chosen split can be cloud-only
# itself with another codec whose measured cost differs from the best codec's by a few microseconds).
NOISE = 0.02
NOTE = (
    "The edge is emulated by scaling: edge parts run on this CPU and their measured time is multiplied by the "
    "edge emulation factor (and cloud parts by the cloud factor in spec-scaled mode); the link is emulated as "
    "bytes * 8 / bandwidth + RTT. Codec encode/decode times are measured on this CPU, unscaled."
)


@dataclass
class Measured:
    """Median times of one split: edge and cloud parts (unscaled), and per codec bytes, encode and decode."""

    split_id: str
    kind: str
    in_plan: bool
    edge_s: float
    cloud_s: float
    result_bytes: int
    wire_bytes: dict[str, int]
    encode_s: dict[str, float]
    decode_s: dict[str, float]
    verified: dict[str, bool]

    def latency_s(self, codec: str, bandwidth_mbps: float, edge_factor: float, cloud_factor: float) -> float:
        """End-to-end latency with the emulated link and scaling."""
        if self.kind == "edge-only":
            return self.edge_s * edge_factor
        wire = self.wire_bytes[codec] + self.result_bytes
        return (
            self.edge_s * edge_factor
            + self.encode_s[codec]
            + wire * 8 / (bandwidth_mbps * 1e6)
            + RTT_MS / 1e3
            + self.decode_s[codec]
            + self.cloud_s * cloud_factor
        )


def _measure(
    parts: SplitParts, folder: Path, samples: Sequence[dict[str, np.ndarray]], result_bytes: int, repetitions: int
) -> dict[str, Any]:
    """Run a split ``repetitions`` times over the samples (after one warm-up round); medians of each component."""
    edge = OrtModel(folder / parts.edge_model) if parts.edge_model else None
    cloud = OrtModel(folder / parts.cloud_model) if parts.cloud_model else None
    edge_times: list[float] = []
    cloud_times: list[float] = []
    encode: dict[str, list[float]] = {c: [] for c in CODECS}
    decode: dict[str, list[float]] = {c: [] for c in CODECS}
    wire: dict[str, int] = {}
    for index in range(repetitions + 1):
        timed = index > 0
        for sample in samples:
            available = dict(sample)
            if edge is not None:
                produced, elapsed = edge.timed_run(sample)
                available.update(produced)
                if timed:
                    edge_times.append(elapsed)
            for codec in CODECS:
                spec = CodecSpec.parse(codec)
                start = time.perf_counter()
                frames = [encode_tensor(name, available[name], spec) for name in parts.crossing]
                middle = time.perf_counter()
                decoded = {header.name: decode_tensor(header, frame) for header, frame in frames}
                end = time.perf_counter()
                wire[codec] = sum(header.nbytes for header, _ in frames)
                if timed:
                    encode[codec].append(middle - start)
                    decode[codec].append(end - middle)
                if codec == "raw" and cloud is not None:
                    _, elapsed = cloud.timed_run(decoded)
                    if timed:
                        cloud_times.append(elapsed)
    return {
        "edge_s": statistics.median(edge_times) if edge_times else 0.0,
        "cloud_s": statistics.median(cloud_times) if cloud_times else 0.0,
        "result_bytes": result_bytes if cloud is not None else 0,
        "wire_bytes": wire,
        "encode_s": {c: statistics.median(v) for c, v in encode.items()},
        "decode_s": {c: statistics.median(v) for c, v in decode.items()},
    }


def _plan_parts(graph: ModelGraph, plan: Plan) -> list[SplitParts]:
    """The plan's splits as :class:`SplitParts`, with their edge node sets recovered from the graph."""
    parts = []
    for split in plan.splits:
        if split.kind == "cloud-only":
            nodes: frozenset[str] = frozenset()
        elif split.kind == "edge-only":
            nodes = graph.all_nodes
        else:
            made = [t.name for t in split.crossing if graph.tensors[t.name].producer is not None]
            producers = [graph.tensors[n].producer for n in [*made, *split.edge_outputs]]
            nodes = graph.closure(p for p in producers if p is not None)
        parts.append(
            SplitParts(
                split.id,
                nodes,
                split.edge_model,
                split.cloud_model,
                tuple(split.edge_inputs),
                graph.edge_model_outputs(nodes),
                tuple(t.name for t in split.crossing),
                tuple(split.edge_outputs),
                tuple(split.cloud_outputs),
            )
        )
    return parts


def _probes(graph: ModelGraph, kept: list[SplitParts], folder: Path) -> list[SplitParts]:
    """Cuts at fixed fractions of the graph that the plan did not keep."""
    seen = {parts.edge_nodes for parts in kept}
    probes = []
    names = graph.node_names
    for fraction in PROBE_FRACTIONS:
        split = graph.closure([names[int(fraction * (len(names) - 1))]])
        if split in seen:
            continue
        seen.add(split)
        probes.append(write_split(graph, f"probe-{int(fraction * 100):02d}", split, folder))
    return probes


def _mode_config(mode: str, repetitions: int) -> PartitionConfig:
    return PartitionConfig.model_validate(
        {
            **MODES[mode],
            "link": {"bandwidths_mbps": BANDWIDTHS, "rtt_ms": RTT_MS},
            "codecs": CODECS,
            "profiling": {"repetitions": repetitions, "warmup": 2, "threads": 1, "codec_repetitions": 3},
            "verification": {"max_samples": 2},
        }
    )


def _evaluate(plan: Plan, measured: list[Measured]) -> list[dict[str, Any]]:
    edge_factor = plan.edge.emulation_factor or 1.0
    cloud_factor = plan.cloud.emulation_factor or 1.0
    rows = []
    by_id = {m.split_id: m for m in measured}
    for choice in plan.choices:
        bw = choice.bandwidth_mbps
        options = [
            (m.latency_s(codec, bw, edge_factor, cloud_factor), m.split_id, codec)
            for m in measured
            for codec in (CODECS if m.kind != "edge-only" else ["raw"])  # edge-only sends nothing
            if m.verified.get(codec, False)
        ]
        best = min(options)
        chosen = by_id[choice.split].latency_s(choice.codec, bw, edge_factor, cloud_factor)
        edge_only = min(o for o in options if by_id[o[1]].kind == "edge-only")
        cloud_only = min(o for o in options if by_id[o[1]].kind == "cloud-only")
        rows.append(
            {
                "bandwidth_mbps": bw,
                "chosen": {
                    "split": choice.split,
                    "codec": choice.codec,
                    "bytes": choice.wire_bytes,
                    "predicted_ms": round(choice.latency_ms, 3),
                    "measured_ms": round(chosen * 1e3, 3),
                },
                "best_measured": {"split": best[1], "codec": best[2], "ms": round(best[0] * 1e3, 3)},
                "edge_only_measured_ms": round(edge_only[0] * 1e3, 3),
                "cloud_only_measured_ms": round(cloud_only[0] * 1e3, 3),
                "cloud_only_codec": cloud_only[2],
                "chosen_over_best": round(chosen / best[0], 4),
                "chosen_over_edge_only": round(chosen / edge_only[0], 4),
                "chosen_over_cloud_only": round(chosen / cloud_only[0], 4),
                "within_5pct_of_best": chosen <= best[0] * 1.05,
                "not_worse_than_edge_only": chosen <= edge_only[0] * (1 + NOISE),
                "not_worse_than_cloud_only": chosen <= cloud_only[0] * (1 + NOISE),
                "prediction_error": round(choice.latency_ms / (chosen * 1e3) - 1, 4),
            }
        )
    return rows


def _bench_model(name: str, repetitions: int, work: Path, say: Any) -> dict[str, Any]:
    started = time.time()
    exported = get_reference(name).export(work / f"{name}.onnx", 1)
    source = ModelSource(name, exported.path, exported.sample_inputs, reference=True)
    graph = analyse_model(source)
    profile = profile_model(graph, THIS_MACHINE, repetitions=repetitions, warmup=2, threads=1, progress=False)
    samples = graph.samples[:2]
    result: dict[str, Any] = {"nodes": len(graph.nodes), "cpu_ms": round(profile.total_seconds * 1e3, 3)}
    for mode in MODES:
        folder = work / mode
        config = _mode_config(mode, repetitions)
        plan = partition_graph(source, graph, folder, config, measured=profile, progress=False)
        full = OrtModel(folder / "model.onnx")
        expected = [full.run(s) for s in samples]
        measured: list[Measured] = []
        result_bytes = sum(graph.tensors[n].nbytes for n in graph.outputs)
        kept = _plan_parts(graph, plan)
        for parts in kept:
            split = plan.split(parts.split_id)
            times = _measure(parts, folder, samples, result_bytes, repetitions)
            verified = {c.codec: c.verified for c in split.codecs}
            measured.append(Measured(parts.split_id, split.kind, True, verified=verified, **times))
        for parts in _probes(graph, kept, folder / "probes"):
            errors = verify_split(parts, folder / "probes", samples, expected, CODECS, 1e-5)
            verified = {c: errors[c] <= config.verification.tolerance(c) for c in CODECS}
            times = _measure(parts, folder / "probes", samples, result_bytes, repetitions)
            measured.append(Measured(parts.split_id, "split", False, verified=verified, **times))
        rows = _evaluate(plan, measured)
        result[mode] = {
            "edge": {
                "name": plan.edge.name,
                "emulation_factor": plan.edge.emulation_factor,
                "factor_source": plan.edge.factor_source,
                "whole_model_ms": round(plan.edge.total_ms, 3),
            },
            "cloud": {
                "name": plan.cloud.name,
                "emulation_factor": plan.cloud.emulation_factor,
                "whole_model_ms": round(plan.cloud.total_ms, 3),
            },
            "kept_splits": [s.id for s in plan.splits],
            "measured_splits": [
                {
                    "split": m.split_id,
                    "in_plan": m.in_plan,
                    "edge_ms_unscaled": round(m.edge_s * 1e3, 3),
                    "cloud_ms_unscaled": round(m.cloud_s * 1e3, 3),
                    "wire_bytes": m.wire_bytes,
                }
                for m in measured
            ],
            "rows": rows,
            "curves": _curves(plan, measured),
        }
        for row in rows:
            say(
                f"  {name:<13} {mode:<11} {row['bandwidth_mbps']:>6g} Mbit/s: chosen {row['chosen']['split']}/"
                f"{row['chosen']['codec']} {row['chosen']['measured_ms']:.1f} ms (predicted "
                f"{row['chosen']['predicted_ms']:.1f}), best {row['best_measured']['split']}/"
                f"{row['best_measured']['codec']} {row['best_measured']['ms']:.1f} ms, edge-only "
                f"{row['edge_only_measured_ms']:.1f}, cloud-only {row['cloud_only_measured_ms']:.1f}"
            )
    result["seconds"] = round(time.time() - started, 1)
    return result


def _curves(plan: Plan, measured: list[Measured]) -> dict[str, Any]:
    """Measured latency over a bandwidth sweep, per split (best verified codec): for the plot."""
    edge_factor = plan.edge.emulation_factor or 1.0
    cloud_factor = plan.cloud.emulation_factor or 1.0
    sweep = [float(b) for b in np.logspace(-0.5, 3.5, 60)]
    curves: dict[str, Any] = {"bandwidths_mbps": sweep}
    for m in measured:
        curves[m.split_id] = [
            min(m.latency_s(c, bw, edge_factor, cloud_factor) for c in CODECS if m.verified.get(c)) * 1e3
            for bw in sweep
        ]
    return curves


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in results if isinstance(results[m], dict) and "rows" in results[m].get("cpu-cloud", {})]
    figure, axes = plt.subplots(len(models), len(MODES), figsize=(12, 3.6 * len(models)), squeeze=False, dpi=100)
    for row, model in enumerate(models):
        for col, mode in enumerate(MODES):
            ax = axes[row][col]
            data = results[model][mode]
            curves = data["curves"]
            for split, values in curves.items():
                if split == "bandwidths_mbps":
                    continue
                style = ":" if split.startswith("probe") else "--" if split in ("edge-only", "cloud-only") else "-"
                ax.plot(curves["bandwidths_mbps"], values, style, linewidth=1.2, label=split)
            for r in data["rows"]:
                ax.scatter(
                    [r["bandwidth_mbps"]], [r["chosen"]["measured_ms"]], marker="*", s=90, color="black", zorder=5
                )
                ax.scatter([r["bandwidth_mbps"]], [r["chosen"]["predicted_ms"]], marker="x", color="red", zorder=5)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{model} [{mode}] (edge emulated by scaling)", fontsize=9)
            ax.set_xlabel("bandwidth (Mbit/s)", fontsize=8)
            ax.set_ylabel("measured latency (ms)", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
    figure.suptitle("chosen split: black star = measured, red x = predicted; lines: measured per split", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.985))
    figure.savefig(path)
    plt.close(figure)


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Partition every reference model, run its splits, and compare the choice with what was measured."""
    models = (
        ["digits_cnn", "mobilenet_v2", "minilm"]
        if quick
        else ["digits_cnn", "mobilenet_v2", "resnet50", "minilm", "vgg16"]
    )
    repetitions = 3 if quick else 7
    results: dict[str, Any] = {
        "note": NOTE,
        "bandwidths_mbps": BANDWIDTHS,
        "rtt_ms": RTT_MS,
        "codecs": CODECS,
        "repetitions": repetitions,
    }
    for name in models:
        print(f"  partitioning and measuring {name} ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"bench-partition-{name}-") as work:
            results[name] = _bench_model(name, repetitions, Path(work), print)
    rows = [r for name in models for mode in MODES for r in results[name][mode]["rows"]]
    results["summary"] = {
        "points": len(rows),
        "within_5pct_of_best": sum(r["within_5pct_of_best"] for r in rows),
        "not_worse_than_edge_only": sum(r["not_worse_than_edge_only"] for r in rows),
        "not_worse_than_cloud_only": sum(r["not_worse_than_cloud_only"] for r in rows),
        "worst_chosen_over_best": max(r["chosen_over_best"] for r in rows),
        "worst_chosen_over_edge_only": max(r["chosen_over_edge_only"] for r in rows),
        "worst_chosen_over_cloud_only": max(r["chosen_over_cloud_only"] for r in rows),
        "noise_band": NOISE,
        "median_abs_prediction_error": statistics.median(abs(r["prediction_error"]) for r in rows),
        "all_targets_met": all(
            r["within_5pct_of_best"] and r["not_worse_than_edge_only"] and r["not_worse_than_cloud_only"] for r in rows
        ),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot(results, out_dir / "partition.png")
    results["plot"] = "partition.png"
    return results
