"""Device specs from published figures, and a roofline estimate of per-node latency.

A :class:`DeviceSpec` holds a GPU's dense peak throughput (no structured
sparsity) per precision, its memory bandwidth, and two efficiency factors:
the fraction of peak that real kernels reach. Datasheet peaks are never
reached by batch-1 inference; the defaults (0.5 of compute, 0.7 of bandwidth)
are coarse, deliberately round numbers. Replace them with measured profiles
when a device is at hand.

The estimate for one node is a roofline::

    time = max(flops / (peak * compute_efficiency), bytes / (bandwidth * memory_efficiency)) + launch_overhead

where ``bytes`` re-prices floating tensors at the chosen precision (2 bytes
for fp16, 1 for int8) and ``launch_overhead`` is a fixed per-kernel cost
(about 5 us on Jetson, 3 us on a datacenter GPU: the CUDA launch and
TensorRT enqueue cost of one small kernel). Elementwise nodes, which
TensorRT fuses into a neighbouring kernel, pay no launch overhead; their
bytes still count. Nodes that launch no kernel (reshapes, shapes,
constants) cost nothing. No other fusion is modelled, so for graphs of many
small ops the estimate errs high, and more so on the faster device.

Specs ship inside the package, in ``partitioner/device_specs/<name>.yaml``
(package data, so a wheel install has them too); :func:`load_device_spec`
finds them by name, or reads any other spec file by path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field

from tandem.config import ConfigError, StrictModel, load_config
from tandem.partitioner.config import DEVICE_SPECS_DIR
from tandem.partitioner.errors import DeviceSpecError
from tandem.partitioner.flops import NodeCost, count_node_costs

__all__ = [
    "DEVICES_DIR",
    "PRECISIONS",
    "DeviceSpec",
    "PeakThroughput",
    "SourceRef",
    "estimate_node_costs",
    "known_devices",
    "load_device_spec",
    "node_time",
    "speed_ratio",
]

DEVICES_DIR = DEVICE_SPECS_DIR
PRECISIONS = ("fp32", "fp16", "int8")
Precision = Literal["fp32", "fp16", "int8"]
_BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


class PeakThroughput(StrictModel):
    """Dense peak throughput in TFLOP/s (TOPS for int8), without structured sparsity."""

    fp32: float = Field(gt=0)
    fp16: float = Field(gt=0)
    int8: float = Field(gt=0)


class SourceRef(StrictModel):
    """Where the figures come from: a document's title and address."""

    title: str = Field(min_length=1)
    url: str = Field(min_length=1)


class DeviceSpec(StrictModel):
    """One GPU's published figures and the efficiency assumed for real kernels."""

    name: str = Field(min_length=1)
    title: str = Field(min_length=1)
    kind: Literal["edge", "cloud"]
    peak_tflops: PeakThroughput
    memory_bandwidth_gbs: float = Field(gt=0)
    memory_gb: float = Field(gt=0)
    compute_efficiency: float = Field(default=0.5, gt=0, le=1)
    memory_efficiency: float = Field(default=0.7, gt=0, le=1)
    launch_overhead_us: float = Field(default=5.0, ge=0)
    power_mode: str = Field(min_length=1)
    source: list[SourceRef] = Field(min_length=1)
    notes: str = ""

    def peak_flops(self, precision: Precision) -> float:
        """Dense peak in FLOP/s (OP/s for int8) at ``precision``."""
        if precision not in PRECISIONS:
            raise _unknown_precision(self.name, precision)
        return float(getattr(self.peak_tflops, precision)) * 1e12


def known_devices() -> list[str]:
    """Names of the specs shipped in ``partitioner/device_specs``."""
    return sorted(path.stem for path in DEVICES_DIR.glob("*.yaml"))


def load_device_spec(name_or_path: str | Path) -> DeviceSpec:
    """Load a spec by name (``orin_nano_8gb``) from ``partitioner/device_specs``, or from a YAML path."""
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file() or "/" in text:
        path = candidate
    else:
        path = DEVICES_DIR / f"{text}.yaml"
        if not path.is_file():
            known = ", ".join(known_devices()) or "(none found)"
            raise DeviceSpecError(f"unknown device {text!r}: known devices in {DEVICES_DIR} are {known}")
    try:
        return load_config(path, DeviceSpec)
    except ConfigError as exc:
        raise DeviceSpecError(str(exc)) from exc


def node_time(cost: NodeCost, spec: DeviceSpec, precision: Precision = "fp16") -> float:
    """Roofline time in seconds of one counted node on ``spec`` at ``precision``."""
    if not cost.launches_kernel:
        return 0.0
    element_bytes = _BYTES_PER_ELEMENT.get(precision)
    if element_bytes is None:
        raise _unknown_precision(spec.name, precision)
    moved = cost.bytes_moved - cost.float_bytes + cost.float_elements * element_bytes
    compute = cost.flops / (spec.peak_flops(precision) * spec.compute_efficiency)
    memory = moved / (spec.memory_bandwidth_gbs * 1e9 * spec.memory_efficiency)
    launch = 0.0 if cost.fusible else spec.launch_overhead_us * 1e-6
    return max(compute, memory) + launch


def estimate_node_costs(model: onnx.ModelProto, spec: DeviceSpec, precision: Precision = "fp16") -> dict[str, float]:
    """Estimated seconds per node on ``spec``, keyed by node name (see ``flops.ensure_node_names``)."""
    return {name: node_time(cost, spec, precision) for name, cost in count_node_costs(model).items()}


def speed_ratio(edge: DeviceSpec, cloud: DeviceSpec, model: onnx.ModelProto, precision: Precision = "fp16") -> float:
    """How many times longer the whole model takes on ``edge`` than on ``cloud`` (by the estimate)."""
    costs = count_node_costs(model)
    edge_total = sum(node_time(cost, edge, precision) for cost in costs.values())
    cloud_total = sum(node_time(cost, cloud, precision) for cost in costs.values())
    if cloud_total <= 0:
        raise DeviceSpecError(f"model {model.graph.name!r}: estimated cloud time is zero; the graph has no kernels")
    return edge_total / cloud_total


def _unknown_precision(device: str, precision: object) -> DeviceSpecError:
    expected = ", ".join(PRECISIONS)
    return DeviceSpecError(f"device {device!r}: unknown precision {precision!r}; expected one of {expected}")
