"""What the agent needs from a plan: per split, its edge part and its predicted costs."""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tandem.transport.codec import StaticScales

__all__ = ["AgentPlan", "SplitOption", "WireBytes", "static_scales"]


@dataclass(frozen=True)
class SplitOption:
    """One kept split as the agent sees it.

    ``edge_path`` is None for cloud-only (the inputs themselves go up);
    ``edge_only`` splits send nothing. ``wire_bytes`` is for the agent's codec;
    ``edge_outputs`` are graph outputs the edge part computes itself.
    """

    split_id: str
    edge_path: Path | None
    crossing: tuple[str, ...]
    edge_ms: float
    cloud_ms: float
    wire_bytes: int
    codec_ms: float = 0.0
    edge_only: bool = False
    result_bytes: int = 0
    edge_outputs: tuple[str, ...] = ()
    scales: Mapping[str, StaticScales] = field(default_factory=dict, hash=False)
    """Calibrated scales of the crossing tensors, for an int8-static codec."""
    prequantised: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Crossing tensors the edge part itself quantises (the codec in the graph), with the dtype they decode to."""

    def predicted_ms(
        self,
        bandwidth_mbps: float,
        rtt_ms: float,
        *,
        downlink_mbps: float | None = None,
        wire_bytes: int | None = None,
        burst_bytes: int = 0,
        cloud_ms: float | None = None,
    ) -> float:
        """End-to-end latency: edge + codec + bytes up / uplink + RTT + cloud + result down / downlink.

        ``downlink_mbps`` defaults to the uplink's rate (a symmetric link);
        ``wire_bytes`` and ``cloud_ms`` to the plan's figures (the agent passes
        what it measured); the first ``burst_bytes`` of the upload leave before
        the rate applies.
        """
        if self.edge_only:
            return self.edge_ms
        up = self.wire_bytes if wire_bytes is None else wire_bytes
        up_ms = max(0, up - burst_bytes) * 8 / (bandwidth_mbps * 1000)
        down_ms = self.result_bytes * 8 / ((downlink_mbps or bandwidth_mbps) * 1000)
        cloud = self.cloud_ms if cloud_ms is None else cloud_ms
        return self.edge_ms + self.codec_ms + up_ms + rtt_ms + cloud + down_ms


class WireBytes:
    """The bytes each split really put on the wire: a running median per split and codec.

    Inputs compress differently (a photo's int8+zstd activation can be 15 %
    off the plan's figure), so the agent's cost model uses the median of the
    last ``window`` requests, starting from the plan's figure until one is seen.
    The hub's time per split (its queue and compute, as it reports them) is
    kept the same way: a hub busier or slower than the plan profiled (on the
    bed, MobileNetV2 took 20 % longer end to end than predicted) shows there.
    """

    def __init__(self, codec: str, window: int = 32) -> None:
        self.codec = codec
        self.window = window
        self._seen: dict[tuple[str, str], deque[int]] = {}
        self._hub: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def observe(self, split_id: str, nbytes: int) -> None:
        """A request on ``split_id`` put ``nbytes`` on the wire."""
        with self._lock:
            self._seen.setdefault((split_id, self.codec), deque(maxlen=self.window)).append(nbytes)

    def of(self, split: SplitOption) -> int:
        """The bytes to expect for ``split``: the recent median, else the plan's figure."""
        with self._lock:
            seen = self._seen.get((split.split_id, self.codec))
            return int(statistics.median(seen)) if seen else split.wire_bytes

    def observe_hub(self, split_id: str, ms: float) -> None:
        """A request on ``split_id`` spent ``ms`` in the hub's queue and compute."""
        with self._lock:
            self._hub.setdefault(split_id, deque(maxlen=self.window)).append(ms)

    def cloud_ms_of(self, split: SplitOption) -> float:
        """The hub time to expect for ``split``: the recent median, else the plan's ``cloud_ms``."""
        with self._lock:
            seen = self._hub.get(split.split_id)
            return statistics.median(seen) if seen else split.cloud_ms


@dataclass(frozen=True)
class AgentPlan:
    """A plan version loaded for the agent: its splits and the full model for fallback."""

    plan_id: str
    version: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    full_model: Path
    splits: tuple[SplitOption, ...]
    model_name: str = ""  # plan.yaml's model.name: the model that plan updates must be for
    full_edge_ms: float = 0.0
    """The whole model on the edge, as the plan profiled it (plan.yaml's edge.total_ms)."""
    edge_time_scale: float = 1.0
    """The factor the plan's edge times carry over this machine's (plan.yaml's edge.emulation_factor, else 1)."""

    def emulated_edge_s(self, profiled_ms: float, slowdown: float) -> float:
        """Seconds an edge run profiled at ``profiled_ms`` takes on the emulated device.

        The plan's figure brought back to this machine's profiled time, times
        ``slowdown`` (the edge config's ``emulation.edge_slowdown``): a fixed
        figure, so the emulated device is as fast on a busy host as on an idle one.
        """
        return profiled_ms / self.edge_time_scale * slowdown / 1000

    def split(self, split_id: str) -> SplitOption:
        """The split called ``split_id``."""
        for option in self.splits:
            if option.split_id == split_id:
                return option
        raise KeyError(f"plan {self.plan_id!r} has no split {split_id!r}")


def load_agent_plan(plan_dir: Path, codec: str, *, in_graph: bool = True) -> AgentPlan:
    """The agent's view of the plan in ``plan_dir`` for ``codec`` (artifacts verified).

    Splits on which ``codec`` was not verified against the full model are
    left out, so the agent never sends what the plan could not vouch for.
    ``in_graph``: where the plan verified the codec inside the parts, the
    split runs that edge part (its crossing outputs already quantised).
    """
    import logging

    from tandem.contracts.plan import PlanError, load_plan

    plan = load_plan(plan_dir, for_edge=True)  # an edge's copy holds no cloud-only part
    options = []
    for split in plan.splits:
        if split.kind != "edge-only":
            figures = next((c for c in split.codecs if c.codec == codec), None)
            if figures is None or not figures.verified:
                verified_here = [c.codec for c in split.codecs if c.verified]
                logging.getLogger("tandem.edge").warning(
                    "split %s: codec %s not verified (verified: %s); not used", split.id, codec, verified_here
                )
                continue
        options.append(_option(plan_dir, split, codec, in_graph))
    if not any(not option.edge_only for option in options) and any(s.kind != "edge-only" for s in plan.splits):
        verified = sorted({c.codec for s in plan.splits for c in s.codecs if c.verified})
        raise PlanError(
            f"{plan_dir}: codec {codec!r} (the edge config's `codec`) is not verified on any split of plan "
            f"{plan.plan_id} that uses the hub, so only edge-only would be left; verified: {verified}"
        )
    return AgentPlan(
        plan_id=plan.plan_id,
        version=plan.version,
        input_names=tuple(t.name for t in plan.model.inputs),
        output_names=tuple(t.name for t in plan.model.outputs),
        full_model=plan_dir / plan.model.path,
        splits=tuple(options),
        model_name=plan.model.name,
        full_edge_ms=plan.edge.total_ms,
        edge_time_scale=plan.edge.emulation_factor or 1.0,
    )


def _option(plan_dir: Path, split: object, codec: str, in_graph: bool) -> SplitOption:
    from tandem.contracts.plan import SplitPlan

    if not isinstance(split, SplitPlan):
        raise TypeError(split)
    if split.kind == "edge-only":
        return SplitOption(split.id, None, (), split.edge_ms, 0.0, 0, edge_only=True)
    figures = split.codec(codec)
    scales = figures.scales or {}
    edge_model, prequantised = split.edge_model, {}
    if in_graph and figures.in_graph is not None and figures.in_graph.verified:
        edge_model, scales = figures.in_graph.edge_model, figures.in_graph.scales or {}
        dtypes = {t.name: t.dtype for t in split.crossing}
        prequantised = {name: dtypes[name] for name in figures.in_graph.tensors}
    return SplitOption(
        split_id=split.id,
        edge_path=plan_dir / edge_model if edge_model else None,
        crossing=tuple(t.name for t in split.crossing),
        edge_ms=split.edge_ms,
        cloud_ms=split.cloud_ms,
        wire_bytes=figures.wire_bytes,
        codec_ms=figures.encode_ms + figures.decode_ms,
        result_bytes=split.result_bytes,
        edge_outputs=tuple(split.edge_outputs),
        scales=static_scales(scales),
        prequantised=prequantised,
    )


def static_scales(recorded: Mapping[str, object] | None) -> dict[str, StaticScales]:
    """Calibrated scales as plan.yaml records them (``CodecResult.scales``, ``InGraph.scales``), for the encoder."""
    from tandem.contracts.plan import Int8Scales

    found = {}
    for name, entry in (recorded or {}).items():
        if not isinstance(entry, Int8Scales):
            raise TypeError(entry)
        found[name] = StaticScales(tuple(entry.scale), tuple(entry.zero_point), entry.axis, entry.limits)
    return found
