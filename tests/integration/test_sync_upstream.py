"""Records, samples and telemetry from the edge outbox to the hub store through a real Mosquitto, exactly once.

Each scenario writes several thousand entries (3000 inference records, a sample
every 10th, telemetry) while something breaks, and ends with every entry the
outbox ever handed out held once in the hub's store, checked by count and ids.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tandem.cloud_hub.fleet import FleetMetrics, format_fleet
from tandem.cloud_hub.store import SqliteStore
from tandem.edge_agent.outbox import Outbox
from tandem.edge_agent.sampling import InferenceRecorder
from tandem.edge_agent.sync_config import SamplingConfig
from tandem.transport.envelope import Envelope, Kind, pack, unpack
from tests.fixtures.broker import Mosquitto
from tests.fixtures.full_disk import cap_at_current_size
from tests.integration.sync_support import (
    Producer,
    TcpCutter,
    assert_exactly_once,
    closing_all,
    edge_config,
    hub_config,
    start_edge_sync,
    start_hub_sync,
    wait_until,
)

pytestmark = pytest.mark.broker

RECORDS = 3000
SAMPLING = SamplingConfig(mode="every_nth", every_n=10)


def recorder_for(outbox: Outbox, device: str) -> InferenceRecorder:
    return InferenceRecorder(outbox, SAMPLING, device_id=device, plan_in_use=lambda: ("toy", 1))


def test_records_samples_and_telemetry_arrive_once_with_their_content(mosquitto: Mosquitto, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store")
    outbox = Outbox(tmp_path / "outbox.sqlite", device_id="cam-1")
    hub = start_hub_sync(hub_config(mosquitto.port), store)
    edge = start_edge_sync(edge_config(mosquitto.port, tmp_path), outbox, "cam-1")
    with closing_all(store, outbox, hub, edge):
        producer = Producer(recorder_for(outbox, "cam-1"), RECORDS, rate=20_000).start()
        producer.join()
        assert_exactly_once(store, outbox, "cam-1")
        assert store.count(kind="record") == RECORDS
        assert store.count(kind="sample") == RECORDS // 10
        # telemetry comes every telemetry_interval_s: on a fast host the records can all arrive before the first
        wait_until(lambda: store.count(kind="telemetry") >= 1, 10, "a telemetry entry stored")
        record = store.record(f"cam-1:{outbox.epoch}:1")
        assert record is not None and record["kind"] == "record"
        assert record["body"]["request_id"] == "req-0"
        assert record["body"]["top"]["output"] == "logits"
        assert 0 < record["body"]["top"]["confidence"] <= 1
        sample_id = next(iter(store.record_ids(kind="sample")))
        blob = store.sample_blob(sample_id)
        assert blob is not None
        sample = unpack(blob)
        assert sample.kind is Kind.SAMPLE and sample.meta["why"] == "every_nth"
        assert sample.arrays()["x"].shape == (1, 4)
        wait_until(lambda: any(row.get("outbox_backlog") == 0 for row in store.devices()), 10, "status reported")
        row = store.devices()[0]
        assert (row.device, row.records, row.samples) == ("cam-1", RECORDS, RECORDS // 10)
        table = format_fleet(store.devices())
        cells = table.splitlines()[1].split()
        assert cells[0] == "cam-1" and cells[2:5] == ["s", "ago", "-"]  # seen seconds ago; no plan installed by sync
        # telemetry keeps coming, and the hub counts an entry just after storing it
        wait_until(lambda: hub.counters["stored"] == store.count(), 10, "the hub's count caught up")


def test_broker_restarted_mid_stream(mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path) -> None:
    broker = mosquitto_factory(persistence=True)
    store = SqliteStore(tmp_path / "store")
    outbox = Outbox(tmp_path / "outbox.sqlite", device_id="cam-1")
    hub = start_hub_sync(hub_config(broker.port), store)
    edge = start_edge_sync(edge_config(broker.port, tmp_path), outbox, "cam-1")
    with closing_all(store, outbox, hub, edge):
        producer = Producer(recorder_for(outbox, "cam-1"), RECORDS, rate=1500, pause_after=RECORDS // 3).start()
        wait_until(lambda: store.count() > 300, 20, "first entries stored")
        producer.wait_paused()
        broker.restart()
        assert producer.done == RECORDS // 3  # mid-stream, however fast this host produced
        producer.resume()
        producer.join()
        assert_exactly_once(store, outbox, "cam-1")
        assert edge.counters["reconnects"] >= 1


def test_hub_restarted_mid_stream(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = hub_config(mosquitto.port)
    store = SqliteStore(tmp_path / "store")
    outbox = Outbox(tmp_path / "outbox.sqlite", device_id="cam-1")
    hub = start_hub_sync(config, store)
    edge = start_edge_sync(edge_config(mosquitto.port, tmp_path), outbox, "cam-1")
    with closing_all(outbox, edge):
        producer = Producer(recorder_for(outbox, "cam-1"), RECORDS, rate=1500, pause_after=RECORDS // 3).start()
        wait_until(lambda: store.count() > 300, 20, "first entries stored")
        producer.wait_paused()
        hub.stop()
        store.close()
        assert producer.done == RECORDS // 3  # mid-stream, however fast this host produced
        producer.resume()
        time.sleep(1.0)  # entries pile up in the outbox and in the broker's queue for the hub's session
        store = SqliteStore(tmp_path / "store")
        hub = start_hub_sync(config, store)
        with closing_all(store, hub):
            producer.join()
            assert_exactly_once(store, outbox, "cam-1")


def test_link_down_for_a_while(mosquitto: Mosquitto, tmp_path: Path) -> None:
    link = TcpCutter(mosquitto.host, mosquitto.port)
    store = SqliteStore(tmp_path / "store")
    outbox = Outbox(tmp_path / "outbox.sqlite", device_id="cam-1")
    hub = start_hub_sync(hub_config(mosquitto.port), store)
    edge = start_edge_sync(edge_config(link.port, tmp_path), outbox, "cam-1")
    with closing_all(link, store, outbox, hub, edge):
        producer = Producer(recorder_for(outbox, "cam-1"), RECORDS, rate=1000).start()
        wait_until(lambda: store.count() > 200, 20, "first entries stored")
        link.cut()
        before = store.count()
        time.sleep(3.0)
        during = store.count()
        backlog_while_down = outbox.backlog
        link.restore()
        producer.join()
        assert_exactly_once(store, outbox, "cam-1")
        assert during - before <= 8 * 200  # at most what was already in flight when the link went down
        assert backlog_while_down > 1000  # the outbox held what was written meanwhile
        assert edge.counters["reconnects"] >= 1


def test_entries_over_the_hubs_limit_are_rejected_by_name_and_sync_goes_on(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "store")
    outbox = Outbox(tmp_path / "outbox.sqlite", device_id="cam-1")
    hub = start_hub_sync(hub_config(mosquitto.port, max_record_bytes=1024), store)
    edge = start_edge_sync(edge_config(mosquitto.port, tmp_path), outbox, "cam-1")
    with closing_all(store, outbox, hub, edge), caplog.at_level(logging.WARNING):
        small = outbox.put("record", msgpack.packb({"n": 1}))
        big = outbox.put("record", msgpack.packb({"blob": b"x" * 2000}))
        after = outbox.put("record", msgpack.packb({"n": 2}))
        wait_until(lambda: outbox.backlog == 0, 20, "outbox drained")
        assert store.record_ids() >= {small, after}
        assert big not in store.record_ids()
        assert outbox.counters()["rejected"] == 1
        assert f"rejected record entry '{big}' from 'cam-1' (record_too_large): record entry of 2" in caplog.text
        assert "over the hub's limit of 1024 bytes (sync.max_record_bytes)" in caplog.text
        assert f"the hub rejected entry {big} (record_too_large)" in caplog.text


def test_a_full_hub_disk_loses_nothing_and_warns_once(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "store")
    outbox = Outbox(tmp_path / "outbox.sqlite", device_id="cam-1")
    with store._lock:
        cap = cap_at_current_size(store._db)  # SQLite now fails as on a full disk
    hub = start_hub_sync(hub_config(mosquitto.port), store)
    edge = start_edge_sync(edge_config(mosquitto.port, tmp_path), outbox, "cam-1")
    with closing_all(store, outbox, hub, edge), caplog.at_level(logging.WARNING):
        for i in range(200):
            outbox.put("record", msgpack.packb({"n": i, "pad": "x" * 1000}))
        wait_until(lambda: hub.counters["store_failed"] >= 3, 20, "the edge's resends refused")
        assert outbox.backlog >= 150 and store.count(kind="record") < 50  # what the file's free pages took
        failed = [r.getMessage() for r in caplog.records if "the store failed" in r.getMessage()]
        assert len(failed) == 1, failed  # one line a minute, not one per message
        assert failed[0].startswith("hub sync: the store failed on a message of kind record from cam-1; the edge keeps")
        assert f"{store.path}: " in failed[0] and "database or disk is full" in failed[0]
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not [m for m in messages if "refused (store_failed)" in m]  # not once more per message
        refusals = [m for m in messages if m.startswith(("sync: hub refused", "sync: hub error"))]
        assert len(refusals) == 1 and "(store_failed)" in refusals[0], refusals  # the edge's side: once a minute
        with store._lock:
            store._db.execute(f"PRAGMA max_page_count = {cap}")  # space freed
        assert_exactly_once(store, outbox, "cam-1")


def test_a_message_on_another_devices_topic_is_rejected_and_sync_goes_on(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "store")
    outbox = Outbox(tmp_path / "outbox.sqlite", device_id="cam-1")
    hub = start_hub_sync(hub_config(mosquitto.port), store)
    edge = start_edge_sync(edge_config(mosquitto.port, tmp_path), outbox, "cam-1")
    intruder = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    intruder.connect(mosquitto.host, mosquitto.port)
    intruder.loop_start()
    with closing_all(store, outbox, hub, edge), caplog.at_level(logging.WARNING):
        try:
            forged = Envelope(Kind.RECORD, device_id="cam-1", meta={"ids": ["cam-1:forged:1"], "created": [0.0]})
            forged.add_arrays({"0": np.frombuffer(msgpack.packb({"evil": True}), np.uint8)})
            intruder.publish("tandem/v1/sync/cam-2/up/record", pack(forged), qos=1).wait_for_publish(5)
            foreign = Envelope(Kind.RECORD, device_id="cam-2", meta={"ids": ["cam-1:x:1"], "created": [0.0]})
            foreign.add_arrays({"0": np.frombuffer(msgpack.packb({"evil": True}), np.uint8)})
            intruder.publish("tandem/v1/sync/cam-2/up/record", pack(foreign), qos=1).wait_for_publish(5)
        finally:
            intruder.disconnect()
            intruder.loop_stop()
        ids = [outbox.put("record", msgpack.packb({"n": i})) for i in range(50)]
        wait_until(lambda: outbox.backlog == 0, 20, "outbox drained")
        assert store.record_ids() == set(ids)
        assert "rejected a message from 'cam-2' (malformed_header): device: header says 'cam-1' but the message " \
               "came on a topic of device 'cam-2': a message on a topic the device does not own" in caplog.text
        assert "rejected record entry 'cam-1:x:1' from 'cam-2' (foreign_record): record id 'cam-1:x:1' does not " \
               "belong to device 'cam-2'" in caplog.text
        assert hub.counters["bad_messages"] == 1


def test_fleet_metrics_and_table_show_each_device(mosquitto: Mosquitto, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store")
    hub = start_hub_sync(hub_config(mosquitto.port), store)
    outboxes = [Outbox(tmp_path / f"{d}.sqlite", device_id=d) for d in ("cam-1", "cam-2")]
    edges = [
        start_edge_sync(edge_config(mosquitto.port, tmp_path / o.device_id, groups=["line-3"]), o, o.device_id,
                        link_estimate=lambda: (12.5, 42.0))
        for o in outboxes
    ]  # fmt: skip
    with closing_all(store, hub, *outboxes, *edges):
        for outbox in outboxes:
            outbox.put_many([("record", msgpack.packb({"i": i})) for i in range(20)])
        wait_until(lambda: len(store.devices()) == 2 and all(r.get("outbox_backlog") == 0 for r in store.devices()),
                   20, "both devices report an empty outbox")  # fmt: skip
        table = format_fleet(store.devices()).splitlines()
        assert table[0].split()[:4] == ["device", "last", "seen", "running"]
        assert [line.split()[0] for line in table[1:]] == ["cam-1", "cam-2"]
        assert all("12.5" in line and "42.0" in line and "line-3" in line for line in table[1:])
        metrics = FleetMetrics()
        for row in store.devices():
            metrics.observe(row)
        assert metrics.registry.get_sample_value("tandem_fleet_bandwidth_mbps", {"device": "cam-2"}) == 42.0
        assert metrics.registry.get_sample_value("tandem_fleet_outbox_dropped", {"device": "cam-1"}) == 0
        assert hub.metrics.registry.get_sample_value("tandem_sync_stored_total", {"device": "cam-1",
                                                                                  "kind": "record"}) == 20  # fmt: skip


def test_a_full_outbox_drops_the_oldest_and_reports_the_count(mosquitto: Mosquitto, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store")
    outbox = Outbox(tmp_path / "outbox.sqlite", device_id="cam-1", max_records=100)
    with closing_all(store, outbox):
        for i in range(250):  # written while no sync runs: the link is down
            outbox.put("record", msgpack.packb({"i": i}))
        hub = start_hub_sync(hub_config(mosquitto.port), store)
        edge = start_edge_sync(edge_config(mosquitto.port, tmp_path), outbox, "cam-1")
        with closing_all(hub, edge):
            wait_until(lambda: outbox.backlog == 0, 20, "outbox drained")
            wait_until(lambda: any(r.get("outbox_dropped") == 150 for r in store.devices()), 10, "dropped reported")
            kept = {outbox.record_id(seq) for seq in range(151, 251)}
            assert kept <= store.record_ids()
            assert outbox.dropped == 150
            assert hub.metrics.registry.get_sample_value("tandem_fleet_outbox_dropped", {"device": "cam-1"}) == 150
