"""Per-node device times: measured here with ONNX Runtime, read from a device profile, or estimated from a spec.

Measuring (:func:`profile_model`). ORT's own profiler times every node
(``SessionOptions.enable_profiling``: one ``<node>_kernel_time`` event per
node and run). It runs with graph optimisations off, so that every ONNX node
keeps its name (fusions would rename nodes and hide the time of those fused
away); then the whole model is timed at the full optimisation level that
deployment uses, and the per-node medians are scaled so that they add up to
that whole-model median. Repetitions follow warm-up runs; each figure is a
median.

A :class:`DeviceProfile` is that result as a JSON file, written by
``tandem profile MODEL --device-name NAME --out profile.json`` on the real
device and read back by ``tandem partition --edge-profile profile.json``. It
names the model by sha256, so a profile of another model is refused.

Estimating (:func:`spec_times`) uses :mod:`tandem.partitioner.devices`: a roofline
per node from a device spec. :func:`emulation_factor` is the ratio of two such
estimates over the whole model; an edge emulated on this CPU takes the CPU's
measured times multiplied by it.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationError
from tqdm import tqdm

from tandem.config import StrictModel
from tandem.partitioner.errors import PartitionError
from tandem.partitioner.graph import ModelGraph, static_model

__all__ = [
    "PROFILE_FORMAT",
    "DeviceProfile",
    "OrtModel",
    "ProfileError",
    "check_provider",
    "emulation_factor",
    "load_profile",
    "profile_model",
    "spec_times",
]

PROFILE_FORMAT = "tandem-device-profile/1"
_KERNEL_SUFFIX = "_kernel_time"


class ProfileError(PartitionError):
    """A device profile cannot be measured, read, or does not belong to the model."""


class DeviceProfile(StrictModel):
    """Per-node median seconds of one model measured on one device."""

    format: str = Field(PROFILE_FORMAT, description="file format tag")
    device_name: str = Field(min_length=1, description="the device the model was measured on")
    model_name: str = Field(description="the model file's stem, for messages")
    model_sha256: str = Field(min_length=64, max_length=64, description="sha256 of the ONNX file measured")
    onnxruntime_version: str
    provider: str = Field(description="ONNX Runtime execution provider used")
    threads: int = Field(ge=0, description="intra-op threads (0: ORT's default)")
    repetitions: int = Field(ge=1)
    created: str = Field(description="UTC time of the measurement, ISO 8601")
    total_seconds: float = Field(ge=0, description="median whole-model latency at full optimisation")
    node_sum_seconds: float = Field(ge=0, description="sum of the per-node medians before scaling")
    node_seconds: dict[str, float] = Field(description="per-node median seconds, scaled to total_seconds")
    spread: float = Field(0.0, ge=0, description="(p75 - p25) / median of the whole-model times: the noise")
    stable: bool = Field(
        True, description="whether the median settled before the run or time budget ran out (one round: not checked)"
    )

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON; return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(), indent=1, sort_keys=False) + "\n", encoding="utf-8")
        return path


def load_profile(path: str | Path, *, model_sha256: str | None = None, model_name: str = "") -> DeviceProfile:
    """Read a profile; with ``model_sha256``, refuse one measured on another model."""
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{where}: profile file not found") from None
    except OSError as exc:
        raise ProfileError(f"{where}: cannot be read: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{where}: not a device profile: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"{where}: not a device profile: 'format' is not {PROFILE_FORMAT!r}")
    try:
        profile = DeviceProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ProfileError(f"{where}: {key}: {first['msg']}") from exc
    if model_sha256 is not None and profile.model_sha256 != model_sha256:
        raise ProfileError(
            f"{where}: profile of another model: it was measured on {profile.model_name!r} "
            f"(sha256 {profile.model_sha256[:12]}...), not on {model_name or 'this model'!r} "
            f"(sha256 {model_sha256[:12]}...); run `tandem profile` with this model on {profile.device_name!r}"
        )
    return profile


def _session_options(threads: int, level: str, profile_prefix: Path | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return options


def check_provider(provider: str, where: str = "provider") -> str:
    """Return ``provider`` if this ONNX Runtime offers it; else a :class:`ProfileError` naming ``where``.

    ONNX Runtime itself only warns and falls back to the CPU for an unknown provider, so a profile
    would silently measure the CPU under another provider's name.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        raise ProfileError(
            f"{where}: execution provider {provider!r} is not available in this ONNX Runtime "
            f"({ort.__version__}); available: {', '.join(available)}"
        )
    return provider


class OrtModel:
    """An ONNX Runtime session with Tandem's measurement settings (sequential, fixed threads)."""

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        threads: int = 1,
        provider: str = "CPUExecutionProvider",
        level: str = "all",
        profile_prefix: Path | None = None,
    ) -> None:
        import onnxruntime as ort

        source = model if isinstance(model, bytes) else str(model)
        check_provider(provider)
        try:
            self.session = ort.InferenceSession(
                source, _session_options(threads, level, profile_prefix), providers=[provider]
            )
        except Exception as exc:  # ORT raises untyped errors
            name = "model bytes" if isinstance(model, bytes) else str(model)
            raise ProfileError(f"{name}: ONNX Runtime cannot load it with {provider}: {exc}") from exc
        # the provider ONNX Runtime really uses first: it falls back to the CPU when one fails to initialise
        self.provider: str = self.session.get_providers()[0]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; ``feeds`` may hold extra tensors, only the session's inputs are passed."""
        values = self.session.run(self.output_names, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, values, strict=True))

    def timed_run(self, feeds: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """Run once and return the outputs with the wall time of the run."""
        chosen = {name: feeds[name] for name in self.input_names}
        start = time.perf_counter()
        values = self.session.run(self.output_names, chosen)
        elapsed = time.perf_counter() - start
        return dict(zip(self.output_names, values, strict=True)), elapsed


def _feeds(samples: Sequence[Mapping[str, np.ndarray]], index: int) -> Mapping[str, np.ndarray]:
    return samples[index % len(samples)]


def profile_model(
    graph: ModelGraph,
    device_name: str,
    *,
    repetitions: int = 10,
    warmup: int = 2,
    threads: int = 1,
    provider: str = "CPUExecutionProvider",
    progress: bool = True,
    max_repetitions: int | None = None,
    stable_within: float = 0.02,
    budget_s: float = 60.0,
) -> DeviceProfile:
    """Measure per-node median seconds of ``graph`` here (see the module docstring).

    The whole model is timed in rounds of ``repetitions`` runs until the median of all runs moves by
    less than ``stable_within`` (relative) from one round to the next, ``max_repetitions`` runs are
    done, or ``budget_s`` seconds have passed; the per-node profile then takes as many runs. The spread
    of the whole-model times, ``(p75 - p25) / median``, is recorded: choices closer than it are ties.
    """
    import onnxruntime as ort

    if repetitions < 1 or warmup < 0:
        raise ProfileError(f"profiling needs repetitions >= 1 and warmup >= 0, got {repetitions} and {warmup}")
    check_provider(provider)
    model_bytes = graph.model.SerializeToString()
    limit = max(repetitions, max_repetitions or repetitions)
    bar = tqdm(total=2 * (warmup + repetitions), desc=f"profiling {graph.name}", unit="run", disable=not progress)
    whole = OrtModel(model_bytes, threads=threads, provider=provider, level="all")
    if whole.provider != provider:
        raise ProfileError(
            f"provider {provider!r}: ONNX Runtime could not use it for {graph.name!r} and fell back to "
            f"{whole.provider!r}; the profile would not measure {provider!r}"
        )
    totals, stable = _time_until_stable(whole, graph, warmup, repetitions, limit, stable_within, budget_s, bar)
    with tempfile.TemporaryDirectory(prefix="tandem-profile-") as tmp:
        per_node = _profile_nodes(model_bytes, graph, threads, provider, warmup, len(totals), Path(tmp), bar)
    bar.close()
    total = statistics.median(totals)
    node_sum = sum(per_node.values())
    if node_sum <= 0:
        raise ProfileError(f"model {graph.name!r}: ONNX Runtime's profile holds no node times")
    scale = total / node_sum
    node_seconds = {name: per_node.get(name, 0.0) * scale for name in graph.node_names}
    return DeviceProfile(
        device_name=device_name,
        model_name=graph.name,
        model_sha256=graph.sha256,
        onnxruntime_version=ort.__version__,
        provider=whole.provider,
        threads=threads,
        repetitions=len(totals),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        total_seconds=total,
        node_sum_seconds=node_sum,
        node_seconds=node_seconds,
        spread=_spread(totals),
        stable=stable,
    )


def _spread(values: Sequence[float]) -> float:
    """``(p75 - p25) / median``: how far apart repeated measurements of the same thing land."""
    median = statistics.median(values)
    if median <= 0 or len(values) < 2:
        return 0.0
    p25, p75 = np.quantile(values, [0.25, 0.75])
    return float((p75 - p25) / median)


def _time_until_stable(
    whole: OrtModel,
    graph: ModelGraph,
    warmup: int,
    repetitions: int,
    limit: int,
    stable_within: float,
    budget_s: float,
    bar: tqdm,
) -> tuple[list[float], bool]:
    """Whole-model seconds per run, in rounds of ``repetitions`` until the median settles (see profile_model)."""
    for index in range(warmup):
        whole.timed_run(_feeds(graph.samples, index))
        bar.update(1)
    start = time.perf_counter()
    totals: list[float] = []
    previous: float | None = None
    while True:
        for _ in range(repetitions):
            _, elapsed = whole.timed_run(_feeds(graph.samples, warmup + len(totals)))
            totals.append(elapsed)
        bar.update(repetitions)
        median = statistics.median(totals)
        if previous is not None and abs(median - previous) <= stable_within * previous:
            return totals, True
        if len(totals) + repetitions > limit or time.perf_counter() - start > budget_s:
            return totals, previous is None and limit <= repetitions
        previous = median


def _profile_nodes(
    model_bytes: bytes,
    graph: ModelGraph,
    threads: int,
    provider: str,
    warmup: int,
    repetitions: int,
    tmp: Path,
    bar: tqdm,
) -> dict[str, float]:
    """Median seconds per node name from ORT's profiler (unoptimised graph: constant nodes are dropped)."""
    runner = OrtModel(model_bytes, threads=threads, provider=provider, level="none", profile_prefix=tmp / "ort")
    for index in range(warmup + repetitions):
        runner.run(_feeds(graph.samples, index))
        bar.update(1)
    trace = Path(runner.session.end_profiling())
    try:
        events = json.loads(trace.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"ONNX Runtime's profile {trace} cannot be read: {exc}") from exc
    durations: dict[str, list[float]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith(_KERNEL_SUFFIX):
            durations.setdefault(name[: -len(_KERNEL_SUFFIX)], []).append(float(event["dur"]) * 1e-6)
    known = set(graph.node_names)
    return {name: statistics.median(times[warmup:] or times) for name, times in durations.items() if name in known}


def spec_times(graph: ModelGraph, spec_name: str, precision: str = "fp16") -> tuple[Any, dict[str, float]]:
    """The spec (see :mod:`tandem.partitioner.devices`) and its roofline seconds for every compute node."""
    from tandem.partitioner.devices import estimate_node_costs, load_device_spec

    spec = load_device_spec(spec_name)
    estimates = estimate_node_costs(static_model(graph), spec, precision)  # type: ignore[arg-type]
    return spec, {name: float(estimates.get(name, 0.0)) for name in graph.node_names}


def emulation_factor(graph: ModelGraph, edge_spec: str, cloud_spec: str, precision: str = "fp16") -> float:
    """How many times slower the edge is than the cloud on this model, by the two specs' estimates."""
    _, edge = spec_times(graph, edge_spec, precision)
    _, cloud = spec_times(graph, cloud_spec, precision)
    cloud_total = sum(cloud.values())
    if cloud_total <= 0:
        raise ProfileError(f"model {graph.name!r}: the estimate for {cloud_spec!r} is zero; no kernels counted")
    return sum(edge.values()) / cloud_total
