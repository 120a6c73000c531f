"""``hub.yaml``: what the cloud hub loads, where it listens, how it batches."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from tandem.cloud_hub.sync_config import HubSyncConfig
from tandem.config import StrictModel
from tandem.executors.base import check_executor_name
from tandem.transport.codec import CodecSpec
from tandem.transport.config import ChannelConfig, LimitsConfig, ZmqConfig

__all__ = ["BatchingConfig", "ExecutorConfig", "HubConfig", "MetricsConfig"]


class BatchingConfig(StrictModel):
    """Dynamic batching per (plan, split): wait at most ``max_queue_delay_ms`` to fill a batch.

    Admission: each (plan, split) queues at most ``max_queue`` requests, and
    one device at most ``max_queue_per_device`` of them; a request beyond
    either is answered ``overloaded`` at once, so a flood costs the flooder.
    """

    enabled: bool = True
    max_batch_size: int = Field(16, ge=1)
    max_queue_delay_ms: float = Field(4.0, ge=0)
    max_queue: int = Field(256, ge=1, description="requests waiting per (plan, split) before 'overloaded'")
    max_queue_per_device: int = Field(64, ge=1, description="of those, from one device")


class ExecutorConfig(StrictModel):
    """Which executor runs the cloud parts (``auto``, ``onnxruntime``, ``tensorrt``)."""

    name: str = "auto"
    providers: list[str] | None = Field(None, description="onnxruntime only: execution providers, in order")
    threads: int = Field(0, ge=0, description="onnxruntime only: intra-op threads, 0 = its default")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_executor_name(value)


class MetricsConfig(StrictModel):
    """Prometheus metrics over HTTP; ``port: null`` turns them off."""

    host: str = "127.0.0.1"
    port: int | None = Field(9464, ge=0, lt=65536)
    max_devices: int = Field(
        10_000, gt=0, description="device label values kept; devices beyond it are counted as 'other'"
    )


def _default_channel() -> ChannelConfig:
    return ZmqConfig(address="tcp://127.0.0.1:5555")


class HubConfig(StrictModel):
    """The cloud hub's whole config."""

    plans: list[Path] = Field(..., min_length=1, description="plan directories written by `tandem partition`")
    channels: list[ChannelConfig] = Field(default_factory=lambda: [_default_channel()])
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    reply_codec: str = Field("raw", description="codec for results sent back to the edge")
    sync: HubSyncConfig | None = Field(None, description="data sync with the fleet over MQTT (records, samples, plans)")
    shutdown_grace_s: float = Field(
        10.0, ge=0, description="on SIGTERM: how long queued and running requests get to be answered before exit"
    )

    @field_validator("reply_codec")
    @classmethod
    def _codec(cls, value: str) -> str:
        if CodecSpec.parse(value).static:
            raise ValueError(f"{value!r}: replies have no calibrated scales; use int8 (per-message scales) instead")
        return value
