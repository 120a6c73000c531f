"""``edge.yaml`` ``sync:`` section: the durable outbox, what is sampled, and the sync channel to the hub.

Example::

    sync:
      mqtt: {host: broker.example.com, port: 8883, tls: {ca_file: ca.crt}}
      groups: [line-3]
      model: resnet18
      outbox: {path: /var/lib/tandem/outbox.sqlite, max_records: 200000, when_full: drop_oldest}
      sampling: {mode: hard, confidence_below: 0.6}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tandem.config import StrictModel
from tandem.contracts.sync_topics import SYNC_TOPIC_PREFIX
from tandem.transport.config import MqttConfig, check_topic_name, sync_topics

__all__ = ["EdgeSyncConfig", "OutboxConfig", "SamplingConfig"]


class OutboxConfig(StrictModel):
    """The on-disk outbox (SQLite): where, how big, and what happens when it is full.

    ``when_full``: ``drop_oldest`` deletes the oldest entries to make room;
    ``stop_sampling`` refuses new entries (and stops encoding samples) until
    the backlog drains. Either way each entry lost is counted in the persisted
    ``dropped`` counter. ``synchronous``: ``normal`` (default) survives a killed
    process; ``full`` also survives a power cut, at one fsync per write.
    """

    path: Path = Path("tandem-outbox.sqlite")
    max_records: int = Field(100_000, ge=1)
    max_bytes: int = Field(512 << 20, ge=1024)
    when_full: Literal["drop_oldest", "stop_sampling"] = "drop_oldest"
    max_record_bytes: int = Field(4 << 20, ge=256, description="a single entry larger than this is refused")
    synchronous: Literal["normal", "full"] = "normal"


class SamplingConfig(StrictModel):
    """Which inputs are kept as samples (their tensors go up), besides one record per inference.

    ``every_nth``: every ``every_n``-th input; ``hard``: inputs whose top
    softmax probability (of ``output``, default the first output) is below
    ``confidence_below``; ``all``; ``none``.
    """

    mode: Literal["none", "every_nth", "hard", "all"] = "every_nth"
    every_n: int = Field(100, ge=1)
    confidence_below: float = Field(0.5, gt=0, le=1)
    output: str | None = Field(None, description="output holding the class scores; default the first")
    records: bool = Field(True, description="write an inference record for every request")


class EdgeSyncConfig(StrictModel):
    """Data sync with the hub over MQTT: records and samples up, plans and artifacts down.

    The sync channel is an MQTT client of its own (not the activation channel), on
    topics of its own (prefix ``tandem/v1/sync`` unless ``mqtt.topic_prefix`` is set),
    with a fixed client id (``tandem-sync-<device>`` unless ``mqtt.client_id``
    is set) and a persistent session, so that the broker keeps acknowledgements
    and plan announcements while the box is away.
    """

    mqtt: MqttConfig = Field(default_factory=lambda: MqttConfig(topic_prefix=SYNC_TOPIC_PREFIX))
    groups: list[str] = Field(default_factory=list, description="fleet groups whose plan announcements it follows")
    model: str | None = Field(None, description="model name plans must be for; default: the current plan's")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    batch_max_records: int = Field(200, ge=1, le=256, description="entries per message (at most 256 tensors)")
    batch_max_bytes: int = Field(192 << 10, ge=1024, description="bytes per message; one bigger entry goes alone")
    max_in_flight_batches: int = Field(8, ge=1)
    ack_timeout_s: float = Field(10.0, gt=0, description="resend a batch not acknowledged after this")
    max_ack_timeout_s: float = Field(120.0, gt=0, description="ceiling of the resend backoff while the hub is silent")
    status_interval_s: float = Field(5.0, gt=0, description="how often the fleet status goes to the hub")
    telemetry_interval_s: float = Field(30.0, gt=0, description="how often a telemetry record enters the outbox")
    plans_dir: Path = Field(Path("tandem-plans"), description="downloaded plan versions, staging, `current` link")
    artifact_chunk_bytes: int = Field(128 << 10, ge=1024, le=16 << 20)
    artifact_window: int = Field(4, ge=1, description="artifact chunks requested ahead")
    artifact_timeout_s: float = Field(10.0, gt=0, description="re-request a chunk not answered after this")

    @field_validator("mqtt")
    @classmethod
    def _sync_topics(cls, mqtt: MqttConfig) -> MqttConfig:
        return sync_topics(mqtt)

    @field_validator("groups")
    @classmethod
    def _topic_safe(cls, groups: list[str]) -> list[str]:
        return [check_topic_name("group", group) for group in groups]
