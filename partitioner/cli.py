"""``tandem partition`` and ``tandem profile``.

``tandem partition MODEL --out DIR [--config partition.yaml]`` partitions an
ONNX file or a reference model (by name) and writes a plan folder; it prints
the kept splits and, for every configured bandwidth, the chosen split next to
edge-only and cloud-only.

``tandem profile MODEL --device-name NAME --out profile.json`` measures the
model's per-node times with ONNX Runtime where it runs (on the edge device)
for ``tandem partition --edge-profile profile.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from partitioner.errors import PartitionError
from tandem.config import ConfigError, load_config

__all__ = ["format_plan", "main", "register"]


def register(subparsers: Any) -> None:
    """Add the ``partition`` and ``profile`` commands to a ``tandem`` subparsers object."""
    partition = subparsers.add_parser(
        "partition",
        help="split a model between edge and cloud; write a plan folder",
        description="Find where to cut MODEL (an ONNX file or a reference model name) for each configured link, "
        "export edge.onnx/cloud.onnx per kept split, verify them, and write plan.yaml and latency.png.",
    )
    partition.add_argument(
        "model", help="ONNX file, or a reference model: resnet50, mobilenet_v2, vgg16, minilm, digits_cnn"
    )
    partition.add_argument("--out", required=True, type=Path, help="plan folder to write")
    partition.add_argument("--config", type=Path, help="partition config YAML (see configs/partition.yaml)")
    partition.add_argument(
        "--cut", action="append", metavar="TENSOR", help="force the split crossed by these tensors (repeat for several)"
    )
    partition.add_argument("--inputs", type=Path, help=".npz file with one sample array per model input")
    partition.add_argument("--edge-profile", type=Path, help="edge node times from `tandem profile` on the device")
    partition.add_argument("--cloud-profile", type=Path, help="cloud node times from `tandem profile`")
    partition.add_argument("--no-progress", action="store_true", help="no progress bars")
    partition.add_argument("--plan-version", type=int, default=1, help="version recorded in plan.yaml (default 1)")
    partition.set_defaults(func=run_partition)

    profile = subparsers.add_parser(
        "profile",
        help="measure a model's per-node times on this device",
        description="Run MODEL with ONNX Runtime's profiler and write per-node median times as a device profile.",
    )
    profile.add_argument("model", help="ONNX file or reference model name")
    profile.add_argument("--device-name", required=True, help="name of this device, recorded in the profile")
    profile.add_argument("--out", required=True, type=Path, help="profile JSON file to write")
    profile.add_argument("--repetitions", type=int, default=20, help="timed runs (default 20)")
    profile.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    profile.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: ORT decides)")
    profile.add_argument("--provider", default="CPUExecutionProvider", help="ONNX Runtime execution provider")
    profile.add_argument("--inputs", type=Path, help=".npz file with one sample array per model input")
    profile.add_argument("--no-progress", action="store_true", help="no progress bar")
    profile.set_defaults(func=run_profile)


def _fail(command: str, exc: Exception) -> int:
    if isinstance(exc, ConfigError):
        print(f"tandem {command}: config error:\n{exc}", file=sys.stderr)
        return 2
    print(f"tandem {command}: error: {exc}", file=sys.stderr)
    return 1


def run_partition(args: argparse.Namespace) -> int:
    """Handler of ``tandem partition``."""
    from partitioner.config import PartitionConfig
    from partitioner.pipeline import partition
    from partitioner.plan import save_plan

    try:
        config = load_config(args.config, PartitionConfig) if args.config else PartitionConfig()
        if args.edge_profile is not None:
            config = config.model_copy(
                update={"edge": config.edge.model_copy(update={"source": "profile", "profile": args.edge_profile})}
            )
        if args.cloud_profile is not None:
            config = config.model_copy(
                update={"cloud": config.cloud.model_copy(update={"source": "profile", "profile": args.cloud_profile})}
            )
        plan = partition(
            args.model, args.out, config, cut=args.cut, inputs=args.inputs, progress=not args.no_progress, say=print
        )
        if args.plan_version != plan.version:
            plan = plan.model_copy(update={"version": args.plan_version})
            save_plan(plan, args.out)
    except (PartitionError, ConfigError) as exc:
        return _fail("partition", exc)
    print(format_plan(plan))
    return 0


def run_profile(args: argparse.Namespace) -> int:
    """Handler of ``tandem profile``."""
    from partitioner.pipeline import analyse_model, load_source
    from partitioner.profiling import profile_model

    try:
        with tempfile.TemporaryDirectory(prefix="tandem-profile-") as work:
            source = load_source(args.model, Path(work), inputs=args.inputs, say=print)
            graph = analyse_model(source, say=print)
            profile = profile_model(
                graph,
                args.device_name,
                repetitions=args.repetitions,
                warmup=args.warmup,
                threads=args.threads,
                provider=args.provider,
                progress=not args.no_progress,
            )
        path = profile.save(args.out)
    except PartitionError as exc:
        return _fail("profile", exc)
    except OSError as exc:
        print(f"tandem profile: error: {args.out}: cannot be written: {exc.strerror}", file=sys.stderr)
        return 1
    print(
        f"wrote {path}: {graph.name} (sha256 {graph.sha256[:12]}...) on {args.device_name}: "
        f"{profile.total_seconds * 1e3:.2f} ms per run, {len(profile.node_seconds)} nodes, {args.provider}"
    )
    return 0


def _bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def format_plan(plan: Any) -> str:
    """The split table and the choice per bandwidth, as printed by ``tandem partition``."""
    edge, cloud = plan.edge, plan.cloud
    factor = f" x{edge.emulation_factor:.3g}" if edge.emulation_factor else ""
    lines = [
        f"plan {plan.plan_id}: {plan.model.name} ({plan.model.nodes} nodes)",
        f"edge {edge.name} [{edge.source}{factor}] {edge.total_ms:.2f} ms whole model; "
        f"cloud {cloud.name} [{cloud.source}] {cloud.total_ms:.2f} ms; RTT {plan.link.rtt_ms:g} ms; "
        f"search {'exact' if plan.search.exact else 'not proven optimal'}",
        "",
        "kept splits:",
    ]
    codecs = plan.codecs
    header = f"  {'split':<11} {'edge nodes':>10} {'edge ms':>9} {'cloud ms':>9}  {'crossing':<34} " + " ".join(
        f"{c:>11}" for c in codecs
    )
    lines.append(header)
    for split in plan.splits:
        names = ", ".join(t.name for t in split.crossing) or "-"
        if len(names) > 34:
            names = names[:31] + "..."
        sizes = " ".join(f"{_bytes(r.wire_bytes) + ('' if r.verified else '!'):>11}" for r in split.codecs)
        lines.append(
            f"  {split.id:<11} {split.edge_nodes:>10} {split.edge_ms:>9.2f} {split.cloud_ms:>9.2f}  {names:<34} {sizes}"
        )
    lines.append("  (bytes on the wire per inference per codec; '!' marks a codec over its verification tolerance)")
    lines += ["", "choice per bandwidth:"]
    lines.append(
        f"  {'Mbit/s':>8}  {'split':<11} {'codec':<10} {'bytes':>9} {'latency ms':>11}   "
        f"{'edge-only ms':>12} {'cloud-only ms':>13} {'(codec)':<10}"
    )
    for choice in plan.choices:
        cloud_ms = "-" if choice.cloud_only_ms is None else f"{choice.cloud_only_ms:.2f}"
        slo = "" if choice.meets_slo is None else ("  meets SLO" if choice.meets_slo else "  MISSES SLO")
        lines.append(
            f"  {choice.bandwidth_mbps:>8g}  {choice.split:<11} {choice.codec:<10} {_bytes(choice.wire_bytes):>9} "
            f"{choice.latency_ms:>11.2f}   {choice.edge_only_ms:>12.2f} {cloud_ms:>13} "
            f"{'(' + (choice.cloud_only_codec or '-') + ')':<10}{slo}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m partitioner.cli partition|profile ...``: the same commands without the tandem entry point."""
    parser = argparse.ArgumentParser(prog="tandem")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
