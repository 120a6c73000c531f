"""What the agent needs from a plan: per split, its edge part and its predicted costs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["AgentPlan", "SplitOption"]


@dataclass(frozen=True)
class SplitOption:
    """One kept split as the agent sees it.

    ``edge_path`` is None for cloud-only (the inputs themselves go up);
    ``edge_only`` splits send nothing. ``wire_bytes`` is for the agent's codec.
    """

    split_id: str
    edge_path: Path | None
    crossing: tuple[str, ...]
    edge_ms: float
    cloud_ms: float
    wire_bytes: int
    codec_ms: float = 0.0
    edge_only: bool = False

    def predicted_ms(self, bandwidth_mbps: float, rtt_ms: float) -> float:
        """End-to-end latency on a link: edge + codec + bytes/bandwidth + RTT + cloud."""
        if self.edge_only:
            return self.edge_ms
        transfer_ms = self.wire_bytes * 8 / (bandwidth_mbps * 1000)
        return self.edge_ms + self.codec_ms + transfer_ms + rtt_ms + self.cloud_ms


@dataclass(frozen=True)
class AgentPlan:
    """A plan version loaded for the agent: its splits and the full model for fallback."""

    plan_id: str
    version: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    full_model: Path
    splits: tuple[SplitOption, ...]

    def split(self, split_id: str) -> SplitOption:
        """The split called ``split_id``."""
        for option in self.splits:
            if option.split_id == split_id:
                return option
        raise KeyError(f"plan {self.plan_id!r} has no split {split_id!r}")
