"""``edge.yaml``: the edge agent's plan, hub link, objective and fallback behaviour."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from tandem.config import StrictModel
from tandem.edge_agent.sync_config import EdgeSyncConfig
from tandem.executors.base import check_executor_name
from tandem.transport.codec import CodecSpec
from tandem.transport.config import ChannelConfig, LimitsConfig, LinkConfig, ZmqConfig, check_device_id

__all__ = ["EdgeConfig", "EmulationConfig", "EndpointConfig", "HysteresisConfig", "ObjectiveConfig", "RetryConfig"]


class ObjectiveConfig(StrictModel):
    """What the split choice optimises.

    ``min_latency``: the lowest predicted end-to-end latency. ``bandwidth_cap``:
    the lowest latency among splits whose uplink use (bytes x request rate)
    stays under ``bandwidth_cap_mbps``. ``latency_slo``: the split that meets
    ``latency_slo_ms`` with the fewest bytes on the uplink (lowest latency when
    none meets it).
    """

    mode: Literal["min_latency", "bandwidth_cap", "latency_slo"] = "min_latency"
    bandwidth_cap_mbps: float | None = Field(None, gt=0)
    latency_slo_ms: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _needs_its_number(self) -> ObjectiveConfig:
        if self.mode == "bandwidth_cap" and self.bandwidth_cap_mbps is None:
            raise ValueError("mode 'bandwidth_cap' needs bandwidth_cap_mbps")
        if self.mode == "latency_slo" and self.latency_slo_ms is None:
            raise ValueError("mode 'latency_slo' needs latency_slo_ms")
        return self


class HysteresisConfig(StrictModel):
    """Switch split only for a gain above the estimates' noise, and not more often than ``min_dwell_s``.

    The margin is twice the relative standard error of the bandwidth estimate,
    never less than ``min_gain`` (docs/link-estimation.md).
    """

    min_gain: float = Field(0.05, ge=0, description="the least relative predicted-latency gain that can switch")
    min_dwell_s: float = Field(2.0, ge=0)


class RetryConfig(StrictModel):
    """How the agent probes an unreachable hub: exponential backoff with a ceiling."""

    initial_s: float = Field(0.5, gt=0)
    max_s: float = Field(8.0, gt=0)
    failures_to_mark_down: int = Field(2, ge=1, description="consecutive timeouts before the hub counts as down")


class EndpointConfig(StrictModel):
    """The local endpoint other processes on the box call (same envelope protocol over ZeroMQ)."""

    address: str | None = "tcp://127.0.0.1:5600"
    workers: int = Field(4, ge=1)


class StatusConfig(StrictModel):
    """The edge's HTTP status port: /metrics, /healthz, /readyz (``port: null`` turns it off)."""

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, lt=65536, description="e.g. 9465; 0 picks a free one; null: no status port")


class EmulationConfig(StrictModel):
    """Make this machine behave like the real edge: a slower device and a shaped link."""

    edge_slowdown: float = Field(1.0, ge=1.0, description="edge compute is stretched by this factor")
    link: LinkConfig | None = None
    schedule: list[LinkStep] = Field(default_factory=list, description="link changes over time (demo, tests)")

    @field_validator("schedule")
    @classmethod
    def _needs_a_link(cls, schedule: list[LinkStep], info: ValidationInfo) -> list[LinkStep]:
        # ``link`` is absent from info.data when it failed itself; that error is reported already.
        if schedule and "link" in info.data and info.data["link"] is None:
            raise ValueError("a schedule changes the emulated link, so emulation.link must be set too")
        return schedule


class LinkStep(StrictModel):
    """At ``at_s`` seconds after start, set the emulated link to these values."""

    at_s: float = Field(..., ge=0)
    bandwidth_mbps: float | None = Field(None, gt=0)
    rtt_ms: float | None = Field(None, ge=0)


EmulationConfig.model_rebuild()


class EdgeConfig(StrictModel):
    """The edge agent's whole config."""

    device_id: str = Field(default_factory=socket.gethostname)
    plan: Path = Field(..., description="plan directory written by `tandem partition` (or synced by the hub)")
    codec: str = "fp16+lz4"
    codec_in_graph: bool = Field(
        True,
        description="where the plan verified the codec inside the parts (fp16, int8-static at a cut), run the edge "
        "part that ends in the cast / QuantizeLinear and send its output as is",
    )
    channel: ChannelConfig = Field(default_factory=lambda: ZmqConfig(address="tcp://127.0.0.1:5555"))
    executor: str = Field("auto", description="auto (TensorRT when available, else onnxruntime), onnxruntime, tensorrt")
    executor_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 lets it decide")
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    hysteresis: HysteresisConfig = Field(default_factory=HysteresisConfig)
    deadline_ms: float = Field(1000.0, gt=0, description="a hub answer later than this is replaced by a local one")
    initial_bandwidth_mbps: float = Field(10.0, gt=0, description="assumed uplink until the agent has measured it")
    initial_rtt_ms: float = Field(20.0, ge=0, description="assumed RTT until the agent has measured it")
    link_wait_s: float = Field(
        1.0, ge=0, description="the first request waits this long at most for a measured link, then assumes the above"
    )
    retry: RetryConfig = Field(default_factory=RetryConfig)
    endpoint: EndpointConfig = Field(default_factory=EndpointConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="on SIGTERM: how long callers in flight and the outbox get before exit"
    )
    telemetry_interval_s: float = Field(5.0, gt=0)
    probe_interval_s: float = Field(2.0, gt=0, description="bandwidth probe period while no activation goes up")
    probe_bytes: int = Field(32_768, ge=0)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    emulation: EmulationConfig = Field(default_factory=EmulationConfig)
    sync: EdgeSyncConfig | None = Field(None, description="data sync with the hub over MQTT (records, samples, plans)")

    @field_validator("codec")
    @classmethod
    def _codec(cls, value: str) -> str:
        CodecSpec.parse(value)
        return value

    @field_validator("executor")
    @classmethod
    def _executor(cls, value: str) -> str:
        return check_executor_name(value)

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        # Always checked: the id is an MQTT topic level for channel: mqtt and for sync.
        return check_device_id(value)
