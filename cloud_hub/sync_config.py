"""``hub.yaml`` ``sync:`` section: where synced data is stored and how the hub hears the fleet.

Example (two replicas sharing the load through the broker)::

    sync:
      replica_id: hub-a            # the other replica says hub-b
      mqtt: {host: emqx.internal, shared_group: tandem-hubs}
      store: {path: /data/tandem-store}
      publish:
        - {plan: plans/resnet18-v7, version: 7, group: line-3}
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tandem.config import StrictModel
from tandem.contracts.sync_topics import SYNC_TOPIC_PREFIX
from tandem.transport.config import MqttConfig, sync_topics

__all__ = ["HubSyncConfig", "PublishConfig", "StoreConfig"]


class StoreConfig(StrictModel):
    """The default store: ``store.sqlite`` (records, devices, plans) and ``samples/`` (blobs) in ``path``.

    ``synchronous: full`` (default) fsyncs every batch before it is acknowledged:
    an acknowledged record survives a power cut of the hub, which matters because
    the edge deletes its copy on the acknowledgement.
    """

    path: Path = Path("tandem-store")
    synchronous: Literal["normal", "full"] = "full"


class PublishConfig(StrictModel):
    """A plan version to announce at start, to one device or to a fleet group."""

    plan: Path
    version: int | None = Field(None, ge=1, description="default: version in the folder's plan.yaml")
    plan_id: str | None = Field(None, description="default: plan_id in the folder's plan.yaml")
    model: str | None = Field(None, description="default: model.name in the folder's plan.yaml")
    device: str | None = None
    group: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> PublishConfig:
        if (self.device is None) == (self.group is None):
            raise ValueError("set exactly one of device and group")
        return self


class HubSyncConfig(StrictModel):
    """Data sync with the fleet over MQTT: consume records, samples, telemetry; serve plans and artifacts.

    The sync channel is an MQTT server channel of its own (topic prefix ``tandem/v1/sync``
    unless ``mqtt.topic_prefix`` is set) with a fixed client id
    (``tandem-hub-sync-<replica_id>`` unless ``mqtt.client_id`` is set) and a
    persistent session. With ``mqtt.shared_group`` several replicas share the
    fleet's messages; see docs/scaling.md.
    """

    replica_id: str = Field(default_factory=socket.gethostname)
    mqtt: MqttConfig = Field(default_factory=lambda: MqttConfig(topic_prefix=SYNC_TOPIC_PREFIX))
    store: StoreConfig = Field(default_factory=StoreConfig)
    max_record_bytes: int = Field(4 << 20, ge=256, description="an entry larger than this is rejected")
    max_artifact_chunk_bytes: int = Field(1 << 20, ge=1024, description="largest chunk an edge may ask for")
    reoffer_s: float = Field(30.0, gt=0, description="re-announce a plan to a device still behind after this")
    publish: list[PublishConfig] = Field(default_factory=list)

    @field_validator("mqtt")
    @classmethod
    def _sync_topics(cls, mqtt: MqttConfig) -> MqttConfig:
        return sync_topics(mqtt)
