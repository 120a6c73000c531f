"""A running hub under hostile input: bounded metrics and logs, error replies a client can match.

Real ZeroMQ sockets, a real Mosquitto, a real ONNX Runtime tail (the toy
plan of test_hub.py). Each test sends what an attacker or a broken client
would, then checks what the hub exposes (its /metrics page, its log, its
replies) stays bounded and answers the right request.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from tandem.cloud_hub.batcher import Tail
from tandem.cloud_hub.config import HubConfig, MetricsConfig
from tandem.cloud_hub.server import Hub
from tandem.executors import open_executor
from tandem.transport.config import MqttConfig, ZmqConfig
from tandem.transport.envelope import Envelope, Kind, decode, encode, pack, unpack
from tests.fixtures.broker import Mosquitto
from tests.integration.test_hub import activation, ask, client, tail_model
from tests.integration.test_mqtt_channel import raw_paho, wait_until

ONES = np.ones((1, 4), np.float32)
MAX_DEVICES = 10
# The stated bound: a quiet hub's series, plus per device label (max_devices, "other", "unidentified") its
# telemetry gauges (at most 64 names), last-seen and error/request counters (at most one per hub error code).
PER_DEVICE_SERIES = 64 + 1 + 2 * 12
SERIES_BOUND = 120 + (MAX_DEVICES + 2) * PER_DEVICE_SERIES
LINE_BOUND = 400  # characters per series line: labels are at most 64 characters


@pytest.fixture
def small_hub(tmp_path: Path) -> Iterator[Hub]:
    """The toy hub with ``metrics.max_devices: 10``, as an operator bounding the label set would run it."""
    config = HubConfig(
        plans=[tmp_path],
        channels=[ZmqConfig(address="tcp://127.0.0.1:*")],
        metrics=MetricsConfig(port=0, max_devices=MAX_DEVICES),
    )
    with Hub(config, [Tail("toy", 1, "s1", open_executor("onnxruntime", tail_model(tmp_path / "cloud.onnx")))]) as hub:
        yield hub


def scrape(hub: Hub) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.metrics_port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def series(page: str) -> list[str]:
    return [line for line in page.splitlines() if line and not line.startswith("#")]


def random_text(rng: np.random.Generator, size: int) -> str:
    return bytes(rng.integers(97, 123, size, dtype=np.uint8)).decode()


def test_a_flood_of_invented_plans_devices_and_telemetry_names_cannot_grow_the_metrics(small_hub: Hub) -> None:
    rng = np.random.default_rng(17)
    with client(small_hub, "cam-0") as edge:
        ask(edge, activation(ONES, ONES, device_id="cam-0"))
    quiet = series(scrape(small_hub))
    with client(small_hub, "flood") as edge:
        for i in range(2000):
            plan, split, device = random_text(rng, 2048), random_text(rng, 64), f"dev-{i}-{random_text(rng, 200)}"
            edge.send(activation(ONES, ONES, plan_id=plan, split_id=split, device_id=device))
            telemetry = {random_text(rng, 300 if i % 2 else 12): 1.0}
            edge.send(Envelope(kind=Kind.TELEMETRY, device_id=device, meta=telemetry))
        replies = [edge.recv(timeout=10) for _ in range(2000)]
    assert {r.meta["code"] for r in replies} == {"unknown_plan"}
    page = scrape(small_hub)
    lines = series(page)
    # Fixed sizes, not measured ones: the page must not grow with the flood.
    assert len(lines) <= SERIES_BOUND, f"{len(lines)} series (quiet: {len(quiet)})"
    assert len(page) <= SERIES_BOUND * 2 * LINE_BOUND, f"/metrics is {len(page)} bytes"  # series + HELP/TYPE
    requests = [line for line in lines if line.startswith("tandem_hub_requests_total")]
    assert any('plan="unknown"' in line and 'outcome="unknown_plan"' in line for line in requests), requests
    assert all(len(line) < LINE_BOUND for line in lines), max(lines, key=len)[:200]
    devices = {line.split('device="')[1].split('"')[0] for line in lines if 'device="' in line}
    assert len(devices) <= MAX_DEVICES + 2, devices  # max_devices, plus "other" and "unidentified"
    names = {line.split('name="')[1].split('"')[0] for line in lines if line.startswith("tandem_edge_telemetry")}
    assert len(names) <= 64 and all(len(name) <= 64 for name in names)


def test_served_plans_keep_their_own_labels(small_hub: Hub) -> None:
    with client(small_hub, "cam-1") as edge:
        ask(edge, activation(ONES, ONES, device_id="cam-1"))
        bad = ask(edge, activation(ONES, ONES, device_id="cam-1", split_id="nope"))
    assert bad.meta["code"] == "unknown_split"
    page = scrape(small_hub)
    assert 'tandem_hub_requests_total{device="cam-1",outcome="ok",plan="toy",split="s1"} 1.0' in page
    assert 'tandem_hub_requests_total{device="cam-1",outcome="unknown_split",plan="toy",split="unknown"} 1.0' in page


def test_a_huge_plan_id_is_clipped_in_the_log_and_the_reply_and_floods_are_throttled(
    small_hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    huge = "p" * 600_000  # within the 1 MiB header limit
    with caplog.at_level(logging.INFO, "tandem.hub"), client(small_hub, "cam-1") as edge:
        reply = ask(edge, activation(ONES, ONES, device_id="cam-1", plan_id=huge))
        for i in range(300):
            edge.send(activation(ONES, ONES, device_id="cam-1", plan_id=f"{huge}{i}"))
        for _ in range(300):
            assert edge.recv(timeout=10).meta["code"] == "unknown_plan"
    assert reply.meta["code"] == "unknown_plan"
    assert reply.plan_id == ""  # over 4096 characters: not echoed, so the reply fits any header limit
    # (ask() checked the reply's id is the request's: the client can still match it)
    assert len(reply.meta["message"]) < 300 and "(600000 chars)" in reply.meta["message"]
    hub_lines = [r.getMessage() for r in caplog.records if r.name == "tandem.hub"]
    assert hub_lines, "the first rejection is logged"
    assert max(map(len, hub_lines)) < 1000
    assert len(hub_lines) <= 3, hub_lines  # 301 rejections of one code in well under the 10 s interval


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"v": 2}, "version_mismatch", "v"),
        ({"v": None}, "version_mismatch", "v"),
        ({"v": True}, "version_mismatch", "v"),
        ({"deadline": float("nan")}, "malformed_header", "deadline"),
        ({"meta": {"pad": "x" * 300_000}}, "malformed_header", "header"),
        ({"tensors": [{"name": "feat", "dtype": "float32", "shape": [1, 4], "codec": "fancy", "compression": "none",
                       "nbytes": 16, "raw_nbytes": 16}]}, "unknown_codec", "tensors['feat'].codec"),
    ],
    ids=["v2", "no-v", "v-true", "nan-deadline", "header-too-large", "unknown-codec"],
)
def test_rejected_requests_are_answered_with_every_id_they_gave(
    tmp_path: Path, changes: dict[str, object], code: str, field: str
) -> None:
    config = HubConfig(
        plans=[tmp_path],
        channels=[ZmqConfig(address="tcp://127.0.0.1:*")],
        metrics=MetricsConfig(port=None),
        limits={"max_header_bytes": 256 << 10},
    )
    tail = Tail("toy", 1, "s1", open_executor("onnxruntime", tail_model(tmp_path / "cloud.onnx")))
    request = activation(ONES, ONES, device_id="cam-7", plan_version=1)
    header = msgpack.unpackb(bytes(encode(request)[0]))
    header.update(changes)
    context = zmq.Context()
    raw = context.socket(zmq.DEALER)
    try:
        with Hub(config, [tail]) as hub:
            raw.connect(hub.addresses[0])
            raw.send_multipart([msgpack.packb(header), *request.frames])
            assert raw.poll(10_000), "no reply: a client waiting on this id would time out"
            reply = decode(raw.recv_multipart())
    finally:
        raw.close(linger=0)
        context.term()
    assert (reply.kind, reply.meta["code"], reply.meta["field"]) == (Kind.ERROR, code, field)
    assert (reply.request_id, reply.device_id, reply.plan_id, reply.plan_version, reply.split_id) == (
        request.request_id, "cam-7", "toy", 1, "s1"
    )  # fmt: skip


@pytest.mark.broker
def test_an_mqtt_activation_naming_another_device_is_answered_on_its_topic(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/protocol.md 5.1: header ``device`` differs from the topic's: ``malformed_header``, field ``device``."""
    config = HubConfig(plans=[tmp_path], channels=[MqttConfig(port=mosquitto.port)], metrics=MetricsConfig(port=None))
    tail = Tail("toy", 1, "s1", open_executor("onnxruntime", tail_model(tmp_path / "cloud.onnx")))
    spoofed = activation(ONES, ONES, device_id="cam-02")
    with (
        caplog.at_level(logging.DEBUG),
        Hub(config, [tail]),
        raw_paho(mosquitto, subscribe="tandem/v1/cam-01/down/#") as (raw, heard),
    ):
        raw.publish("tandem/v1/cam-01/up/activation", pack(spoofed), 1).wait_for_publish(5)
        wait_until(lambda: bool(heard), timeout=10)
    reply = unpack(heard[0].payload)
    assert heard[0].topic == "tandem/v1/cam-01/down/error"
    assert (reply.meta["code"], reply.meta["field"]) == ("malformed_header", "device")
    assert (reply.request_id, reply.device_id, reply.plan_id, reply.split_id) == (
        spoofed.request_id, "cam-01", "toy", "s1"
    )  # fmt: skip
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the hub's log"


def test_telemetry_names_that_are_not_identifiers_are_not_labels(small_hub: Hub) -> None:
    with client(small_hub, "cam-1") as edge:
        edge.send(Envelope(kind=Kind.TELEMETRY, device_id="cam-1", meta={"cpu_percent": 12.0, "x" * 100: 1.0,
                                                                          "bad name{}": 2.0}))  # fmt: skip
        ask(edge, activation(ONES, ONES, device_id="cam-1"))  # in order after the telemetry on this socket
    page = scrape(small_hub)
    assert 'tandem_edge_telemetry{device="cam-1",name="cpu_percent"} 12.0' in page
    assert "x" * 100 not in page and "bad name" not in page


def test_the_log_bound_holds_for_bytes_too() -> None:
    from tandem.throttled_log import clip

    assert clip(os.urandom(1 << 20)).endswith("… (1048576 bytes)")
    assert len(clip("é" * 10_000)) < 120
    assert clip("short") == "'short'"


FLOOD_DEVICES = 300  # 30 times max_devices


@pytest.mark.broker
def test_a_flood_of_sync_messages_from_invented_devices_cannot_grow_the_fleet_metrics(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """cloud_hub/sync.py labels stored/duplicates/rejected/last_seen and the fleet gauges through the hub's bound."""
    import time

    import msgpack as packer
    from prometheus_client import CollectorRegistry, generate_latest

    from tandem.cloud_hub.metrics import DeviceLabels
    from tandem.cloud_hub.store import SqliteStore
    from tandem.cloud_hub.sync import HubSync, open_hub_sync_channel
    from tests.integration.sync_support import hub_config

    registry = CollectorRegistry()
    store = SqliteStore(tmp_path / "store", synchronous="normal")
    config = hub_config(mosquitto.port)
    sync = HubSync(config, store, channel=open_hub_sync_channel(config), registry=registry,
                   device_label=DeviceLabels(MAX_DEVICES))  # fmt: skip
    sync.start()
    try:
        with raw_paho(mosquitto) as (raw, _):
            for i in range(FLOOD_DEVICES):
                device = f"dev-{i}-{'x' * 150}"
                record = Envelope(Kind.RECORD, device_id=device, meta={"ids": [f"{device}:r:1"], "created": [1.0]})
                record.add_arrays({"0": np.frombuffer(packer.packb({"n": i}), np.uint8)})
                raw.publish(f"tandem/v1/sync/{device}/up/record", pack(record), 1)
                foreign = Envelope(Kind.RECORD, device_id=device, meta={"ids": ["cam-1:r:1"], "created": [1.0]})
                foreign.add_arrays({"0": np.frombuffer(packer.packb({"n": i}), np.uint8)})
                raw.publish(f"tandem/v1/sync/{device}/up/record", pack(foreign), 1)
                status = {"plan_id": "p" * 3000, "plan_version": 1, "rtt_ms": 5.0, "bandwidth_mbps": 9.0}
                raw.publish(f"tandem/v1/sync/{device}/up/telemetry",
                            pack(Envelope(Kind.TELEMETRY, device_id=device, meta={"status": status})), 1)  # fmt: skip
            raw.publish("tandem/v1/sync/last/up/record", b"junk", 1).wait_for_publish(10)
            deadline = time.monotonic() + 120  # messages are handled in order: the junk one comes last
            while sync.counters["bad_messages"] < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        sync.stop()
        store.close()
    assert (sync.counters["stored"], sync.counters["rejected"]) == (FLOOD_DEVICES, FLOOD_DEVICES)
    page = generate_latest(registry).decode()
    lines = series(page)
    devices = {line.split('device="')[1].split('"')[0] for line in lines if 'device="' in line}
    assert len(devices) <= MAX_DEVICES + 2, sorted(devices)
    # Per device label: stored, duplicates, rejected (2 codes), last seen, and six fleet gauges.
    assert len(lines) <= (MAX_DEVICES + 2) * 12, f"{len(lines)} series"
    assert all(len(line) < LINE_BOUND for line in lines), max(lines, key=len)[:200]
