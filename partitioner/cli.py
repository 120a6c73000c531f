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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tandem.config import ConfigError, load_config, parse_config
from tandem.partitioner.errors import PartitionError

__all__ = ["format_plan", "main", "register"]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= ``minimum``; argparse names the flag in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


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
    partition.add_argument("--out", required=True, type=Path, metavar="DIR", help="plan folder to write")
    partition.add_argument(
        "--config", type=Path, metavar="YAML", help="partition config YAML (see configs/partition.yaml)"
    )
    partition.add_argument(
        "--cut", action="append", metavar="TENSOR", help="force the split crossed by these tensors (repeat for several)"
    )
    partition.add_argument(
        "--inputs",
        type=Path,
        metavar="NPZ",
        help=".npz file with one sample array per model input (one sample; its shapes fill open dims)",
    )
    partition.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME=DIMS",
        help="size of an input whose dims the model leaves open, like images=1x3x640x640 (repeat per input; "
        "config inputs.shapes)",
    )
    partition.add_argument(
        "--dim",
        action="append",
        metavar="DIM=SIZE",
        help="size of a named open dim, like height=640 (repeat; config inputs.dims)",
    )
    partition.add_argument(
        "--calibration",
        type=Path,
        metavar="PATH",
        help="real inputs for bytes (p50/p95), verification and fidelity: a folder of images (preprocessing from "
        "config calibration.preprocess, recorded in the plan), an .npz (first axis: samples) or a folder of .npy",
    )
    partition.add_argument(
        "--edge-profile", type=Path, metavar="JSON", help="edge node times from `tandem profile` on the device"
    )
    partition.add_argument("--cloud-profile", type=Path, metavar="JSON", help="cloud node times from `tandem profile`")
    partition.add_argument("--no-progress", action="store_true", help="no progress bars")
    partition.add_argument(
        "--plan-version",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="version recorded in plan.yaml, >= 1 (default 1)",
    )
    partition.set_defaults(func=run_partition)

    profile = subparsers.add_parser(
        "profile",
        help="measure a model's per-node times on this device",
        description="Run MODEL with ONNX Runtime's profiler on this device and write per-node median times as a "
        "device profile JSON, for `tandem partition --edge-profile` (or --cloud-profile).",
    )
    profile.add_argument("model", help="ONNX file or reference model name")
    profile.add_argument(
        "--device-name", required=True, metavar="NAME", help="name of this device, recorded in the profile"
    )
    profile.add_argument("--out", required=True, type=Path, metavar="JSON", help="profile JSON file to write")
    profile.add_argument("--repetitions", type=_int_at_least(1), default=20, help="timed runs (default 20)")
    profile.add_argument("--warmup", type=_int_at_least(0), default=3, help="untimed runs first (default 3)")
    profile.add_argument(
        "--threads", type=_int_at_least(0), default=0, help="ONNX Runtime intra-op threads (0: ORT decides)"
    )
    profile.add_argument(
        "--provider",
        default="CPUExecutionProvider",
        help="ONNX Runtime execution provider, one of those this install offers (default CPUExecutionProvider)",
    )
    profile.add_argument("--inputs", type=Path, metavar="NPZ", help=".npz file with one sample array per model input")
    profile.add_argument(
        "--input-shape", action="append", metavar="NAME=DIMS", help="size of an input with open dims (repeat)"
    )
    profile.add_argument("--dim", action="append", metavar="DIM=SIZE", help="size of a named open dim (repeat)")
    profile.add_argument("--no-progress", action="store_true", help="no progress bar")
    profile.set_defaults(func=run_profile)


def _fail(command: str, exc: Exception) -> int:
    if isinstance(exc, ConfigError):
        print(f"tandem {command}: config error:\n{exc}", file=sys.stderr)
        return 2
    print(f"tandem {command}: error: {exc}", file=sys.stderr)
    return 1


def _check_inputs_file(path: Path | None, flag: str) -> None:
    if path is not None and not path.is_file():
        raise PartitionError(f"{flag} {path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}")


def _check_profile(path: Path | None, where: str) -> None:
    """Read a device profile now, so that a missing or bad file fails before any measuring."""
    from tandem.partitioner.profiling import ProfileError, load_profile

    if path is None:
        return
    try:
        load_profile(path)
    except ProfileError as exc:
        raise ProfileError(f"{where}: {exc}") from exc


def _apply_shape_flags(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """--input-shape and --dim into the config's ``inputs`` section (flags win); a bad flag names itself."""
    from tandem.partitioner.shapes import parse_dim, parse_input_shape

    inputs = data.setdefault("inputs", {})
    for flag, values, parse, key in (
        ("--input-shape", getattr(args, "input_shape", None), parse_input_shape, "shapes"),
        ("--dim", getattr(args, "dim", None), parse_dim, "dims"),
    ):
        for text in values or ():
            try:
                name, value = parse(text)
            except ValueError as exc:
                raise PartitionError(f"{flag} {exc}") from None
            inputs.setdefault(key, {})[name] = list(value) if isinstance(value, tuple) else value
    calibration = getattr(args, "calibration", None)
    if calibration is not None:
        data.setdefault("calibration", {})["path"] = calibration


def _partition_config(args: argparse.Namespace) -> Any:
    """The config file (or the defaults) with --edge-profile/--cloud-profile applied, every path checked."""
    from tandem.partitioner.config import PartitionConfig

    data = load_config(args.config, PartitionConfig).model_dump() if args.config else {}
    name = f"{args.config}: " if args.config else ""
    _apply_shape_flags(args, data)
    for side, flag in (("edge", args.edge_profile), ("cloud", args.cloud_profile)):
        if flag is not None:
            _check_profile(flag, f"--{side}-profile")
            data.setdefault(side, {}).update(source="profile", profile=flag)
        elif data.get(side, {}).get("source") == "profile":
            _check_profile(data[side]["profile"], f"{name}{side}.profile")
    return parse_config(data, PartitionConfig, source=str(args.config or "command line"))


def run_partition(args: argparse.Namespace) -> int:
    """Handler of ``tandem partition``."""
    from tandem.partitioner.pipeline import check_out_dir, partition

    try:
        check_out_dir(args.out, where="--out")
        _check_inputs_file(args.inputs, "--inputs")
        config = _partition_config(args)
        plan = partition(
            args.model,
            args.out,
            config,
            cut=args.cut,
            inputs=args.inputs,
            version=args.plan_version,
            config_source=str(args.config) if args.config else "the default partition config",
            progress=not args.no_progress,
            say=print,
        )
    except (PartitionError, ConfigError) as exc:
        return _fail("partition", exc)
    print(format_plan(plan))
    return 0


def run_profile(args: argparse.Namespace) -> int:
    """Handler of ``tandem profile``."""
    from tandem.partitioner.pipeline import analyse_model, load_source
    from tandem.partitioner.profiling import check_provider, profile_model

    try:
        check_provider(args.provider, "--provider")
        if args.out.is_dir():
            raise PartitionError(f"--out {args.out}: is a folder; give the profile JSON file to write")
        _check_inputs_file(args.inputs, "--inputs")
        with tempfile.TemporaryDirectory(prefix="tandem-profile-") as work:
            from tandem.partitioner.config import PartitionConfig

            shapes: dict[str, Any] = {}
            _apply_shape_flags(args, shapes)
            config = PartitionConfig.model_validate({"inputs": shapes["inputs"]})
            source = load_source(args.model, Path(work), inputs=args.inputs, config=config, say=print)
            graph = analyse_model(source, say=print, config=config)
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
        f"{profile.total_seconds * 1e3:.2f} ms per run, {len(profile.node_seconds)} nodes, {profile.provider}"
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
    lines.append(f"  {'split':<11} {'edge nodes':>10} {'edge ms':>9} {'cloud ms':>9}  crossing")
    for split in plan.splits:
        names = ", ".join(t.name for t in split.crossing) or "-"
        if len(names) > 60:
            names = names[:57] + "..."
        lines.append(f"  {split.id:<11} {split.edge_nodes:>10} {split.edge_ms:>9.2f} {split.cloud_ms:>9.2f}  {names}")
        if split.kind == "edge-only":
            continue
        for r in split.codecs:
            lines.append("      " + _codec_row(r))
    lines.append(
        "  (bytes per inference p50/p95 over the samples; err: worst max|split - full|/max|full| over the samples "
        "against the tolerance; fidelity vs the unsplit model; '!' marks a codec not offered, with why)"
    )
    data = getattr(plan, "data", None)
    if data is not None:
        lines.append(f"  data: {data.source}, {data.samples} sample(s){': ' + data.note if data.note else ''}")
    lines += ["", "choice per bandwidth:"]
    lines.append(
        f"  {'Mbit/s':>8}  {'split':<11} {'codec':<18} {'bytes':>9} {'latency ms':>11}   "
        f"{'edge-only ms':>12} {'cloud-only ms':>13} {'(codec)':<10}"
    )
    for choice in plan.choices:
        cloud_ms = "-" if choice.cloud_only_ms is None else f"{choice.cloud_only_ms:.2f}"
        slo = "" if choice.meets_slo is None else ("  meets SLO" if choice.meets_slo else "  MISSES SLO")
        tie = "≈" if choice.tie_with else " "
        lines.append(
            f"  {choice.bandwidth_mbps:>8g}{tie} {choice.split:<11} {choice.codec:<18} {_bytes(choice.wire_bytes):>9} "
            f"{choice.latency_ms:>11.2f}   {choice.edge_only_ms:>12.2f} {cloud_ms:>13} "
            f"{'(' + (choice.cloud_only_codec or '-') + ')':<10}{slo}"
        )
    if any(choice.tie_with for choice in plan.choices):
        lines.append(
            "  (≈: another split/codec is within the measured spread of node times; the one with fewer bytes is taken)"
        )
    return "\n".join(lines)


def _fidelity_text(fidelity: Any) -> str:
    if fidelity is None:
        return "-"
    if fidelity.kind == "classes":
        return f"top1 {fidelity.value:.3f} top5 {fidelity.top5_overlap:.3f}"
    if fidelity.kind == "embedding":
        return f"cos {fidelity.value:.4f} (min {fidelity.cosine_min:.4f})"
    return f"argmax {fidelity.value:.3f} rel p50 {fidelity.rel_err_p50:.2g} p99 {fidelity.rel_err_p99:.2g}"


def _codec_row(result: Any) -> str:
    p50 = result.wire_bytes_p50 if result.wire_bytes_p50 is not None else result.wire_bytes
    p95 = result.wire_bytes_p95 if result.wire_bytes_p95 is not None else result.wire_bytes
    error = "-" if result.max_error is None else f"{result.max_error:.2g}/{result.tolerance:g}"
    mark = "" if result.verified else f"  ! {result.rejected or 'not verified'}"
    fallbacks = f"  ({len(result.fallbacks)} tensor(s) fall back)" if result.fallbacks else ""
    if result.accuracy is not None:
        fallbacks = f"  labelled top-1 {result.accuracy:.3f}" + fallbacks
    pair = getattr(result, "in_graph", None)
    if pair is not None:
        verdict = "" if pair.verified else f" ! {pair.rejected}"
        fallbacks += f"  [in the graph: err {pair.max_error:.2g}, {_fidelity_text(pair.fidelity).strip()}{verdict}]"
    return (
        f"{result.codec:<18} {_bytes(p50):>9} / {_bytes(p95):<9} err {error:<14} "
        f"{_fidelity_text(result.fidelity)}{mark}{fallbacks}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tandem.partitioner.cli partition|profile ...``: the same commands without the tandem entry point."""
    parser = argparse.ArgumentParser(prog="tandem")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
