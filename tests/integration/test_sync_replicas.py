"""Two hub replicas on one MQTT 5 shared subscription ($share/hubs/...), sharing one store.

The broker hands each message to one member of the group, so both replicas do
part of the work: entries from two edges end up once in the store, and plan
artifacts are served by whichever replica gets the request (a replica learns a
release another one published from the shared store).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.cloud_hub.store import SqliteStore
from tandem.edge_agent.outbox import Outbox
from tandem.edge_agent.sampling import InferenceRecorder
from tandem.edge_agent.sync_config import SamplingConfig
from tandem.transport.config import MqttConfig
from tests.fixtures.broker import Mosquitto
from tests.integration.sync_support import (
    Producer,
    assert_exactly_once,
    closing_all,
    edge_config,
    hub_config,
    start_edge_sync,
    start_hub_sync,
    wait_until,
    write_toy_plan,
)

pytestmark = pytest.mark.broker


def test_replicas_share_the_fleet_and_store_each_entry_once(mosquitto: Mosquitto, tmp_path: Path) -> None:
    stores = [SqliteStore(tmp_path / "shared-store") for _ in range(2)]
    hubs = [
        start_hub_sync(hub_config(mosquitto.port, replica_id=name, mqtt=MqttConfig(port=mosquitto.port,
                                                                                    shared_group="hubs")), store)
        for name, store in zip(("hub-a", "hub-b"), stores, strict=True)
    ]  # fmt: skip
    devices = ("cam-1", "cam-2")
    outboxes = [Outbox(tmp_path / f"{d}.sqlite", device_id=d) for d in devices]
    options = {"groups": ["line-3"], "artifact_chunk_bytes": 16 << 10}
    edges = [start_edge_sync(edge_config(mosquitto.port, tmp_path / o.device_id, **options), o, o.device_id)
             for o in outboxes]  # fmt: skip
    with closing_all(*stores, *outboxes, *hubs, *edges):
        producers = [
            Producer(InferenceRecorder(o, SamplingConfig(every_n=10), device_id=o.device_id), 1500, 1500).start()
            for o in outboxes
        ]
        plan = write_toy_plan(tmp_path / "plan", plan_id="toy-b", scale=2.0, extra_bytes=300_000)
        hubs[0].publish_plan(plan.folder, version=2, group="line-3")
        for producer in producers:
            producer.join()
        for outbox in outboxes:
            assert_exactly_once(stores[0], outbox, outbox.device_id)
        # A replica counts an entry just after committing it: let the counters catch up with the store.
        wait_until(lambda: sum(hub.counters["stored"] for hub in hubs) >= stores[0].count(), 10, "counters settled")
        stored = [hub.counters["stored"] for hub in hubs]
        assert all(count > 0 for count in stored), stored
        assert sum(stored) == stores[0].count()  # no entry counted as new by both
        wait_until(lambda: all(e.plan_in_use() == ("toy-b", 2) for e in edges), 30, "both edges on v2")
        served = [hub.counters["chunks"] for hub in hubs]
        assert all(count > 0 for count in served), served
