"""MqttServer / MqttClient through a real Mosquitto broker on loopback."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tandem.transport import mqtt_channel
from tandem.transport.chunking import CHUNK_MAGIC
from tandem.transport.config import MqttConfig, TlsConfig
from tandem.transport.envelope import PACKED_MAGIC, Envelope, Kind, pack
from tandem.transport.errors import ChannelClosed, ChannelTimeout, ConnectError, MalformedHeader, ProtocolError
from tandem.transport.factory import open_client
from tandem.transport.mqtt_channel import SERVER_SENDER, MqttClient, MqttServer
from tandem.transport.serve import receive_forever
from tests.fixtures.broker import Mosquitto, TlsFiles, free_port, make_test_certificates

pytestmark = pytest.mark.broker

FAST_RECONNECT = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5}


@contextmanager
def channels(*made: MqttServer | MqttClient) -> Iterator[None]:
    """Close every channel at the end, even when the test fails."""
    try:
        yield
    finally:
        for channel in made:
            channel.close()


@contextmanager
def raw_paho(broker: Mosquitto, subscribe: str | None = None) -> Iterator[tuple[paho.Client, list[paho.MQTTMessage]]]:
    """A plain paho client on the broker, optionally collecting what it hears on ``subscribe``."""
    heard: list[paho.MQTTMessage] = []
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.on_message = lambda c, u, m: heard.append(m)
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if subscribe:
            client.subscribe(subscribe, qos=1)
            assert subscribed.wait(5), f"no SUBACK for {subscribe}"
        yield client, heard
    finally:
        client.disconnect()
        client.loop_stop()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def activation(array: np.ndarray, **fields: object) -> Envelope:
    return Envelope.with_arrays(Kind.ACTIVATION, {"x": array}, plan_id="plan-a", split_id="s1", **fields)


def test_round_trip_hub_edge_with_tensors(mosquitto: Mosquitto) -> None:
    hub = MqttServer(port=mosquitto.port)
    edge = MqttClient(device_id="edge-1", port=mosquitto.port)
    with channels(hub, edge):
        features = np.random.default_rng(0).standard_normal((2, 64, 8, 8)).astype(np.float32)
        tokens = np.arange(12, dtype=np.int64).reshape(2, 6)
        request = Envelope.with_arrays(
            Kind.ACTIVATION, {"features": features, "tokens": tokens}, plan_id="plan-a", meta={"batch": 2}
        )
        edge.send(request)

        got = hub.recv(timeout=5)
        assert got.sender == "edge-1"
        assert got.device_id == "edge-1"  # filled in by the edge from its own id
        assert got.request_id == request.request_id
        assert got.meta == {"batch": 2}
        arrays = got.arrays()
        np.testing.assert_array_equal(arrays["features"], features)
        np.testing.assert_array_equal(arrays["tokens"], tokens)

        logits = np.linspace(0, 1, 20, dtype=np.float32).reshape(2, 10)
        reply = got.reply(Kind.RESULT)
        reply.add_arrays({"logits": logits})
        hub.send(reply, to=got.sender)

        answer = edge.recv(timeout=5)
        assert answer.sender == SERVER_SENDER
        assert answer.kind is Kind.RESULT
        assert answer.request_id == request.request_id
        np.testing.assert_array_equal(answer.arrays()["logits"], logits)


def test_each_edge_gets_only_its_replies(mosquitto: Mosquitto) -> None:
    hub = MqttServer(port=mosquitto.port)
    edges = [MqttClient(device_id=f"edge-{i}", port=mosquitto.port) for i in range(3)]
    with channels(hub, *edges):
        sent = {}
        for i, edge in enumerate(edges):
            request = activation(np.full((4,), i, np.float32))
            sent[edge.device_id] = request.request_id
            edge.send(request)
        for _ in edges:
            request = hub.recv(timeout=5)
            reply = request.reply(Kind.RESULT, meta={"for": request.sender})
            hub.send(reply, to=request.sender)
        for edge in edges:
            answer = edge.recv(timeout=5)
            assert answer.meta == {"for": edge.device_id}
            assert answer.request_id == sent[edge.device_id]
            with pytest.raises(ChannelTimeout, match="nothing received"):
                edge.recv(timeout=0.2)


def test_big_payload_is_chunked_and_reassembled(mosquitto: Mosquitto) -> None:
    limit = 256 << 10
    hub = MqttServer(port=mosquitto.port, max_payload_bytes=limit)
    edge = MqttClient(device_id="edge-1", port=mosquitto.port, max_payload_bytes=limit)
    with channels(hub, edge), raw_paho(mosquitto, subscribe="tandem/v1/edge-1/up/#") as (_, wire):
        big = np.random.default_rng(1).standard_normal(3_000_000 // 4).astype(np.float32)  # 3 MB
        edge.send(activation(big))
        got = hub.recv(timeout=10)
        np.testing.assert_array_equal(got.arrays()["x"], big)
        wait_until(lambda: len(wire) >= 12)
        assert all(m.payload[:4] == CHUNK_MAGIC and len(m.payload) <= limit for m in wire)
        assert len(wire) == -(-len(pack(activation(big))) // (limit - 36))

        # The hub chunks its replies the same way.
        hub.send(_echo(got), to="edge-1")
        np.testing.assert_array_equal(edge.recv(timeout=10).arrays()["x"], big)


def _echo(request: Envelope) -> Envelope:
    reply = request.reply(Kind.RESULT)
    reply.tensors, reply.frames = list(request.tensors), list(request.frames)
    return reply


def test_broker_message_size_limit_is_crossed_by_chunking(mosquitto_factory: Callable[..., Mosquitto]) -> None:
    broker = mosquitto_factory(message_size_limit=200_000)
    hub = MqttServer(port=broker.port, max_payload_bytes=128 << 10)
    edge = MqttClient(device_id="edge-1", port=broker.port, max_payload_bytes=128 << 10)
    with channels(hub, edge):
        # The broker silently drops a whole 1 MB payload (QoS 0); the small QoS 1 one after it marks that the
        # broker has handled it.
        with raw_paho(broker) as (raw, _):
            whole = pack(activation(np.zeros(250_000, np.float32), device_id="edge-1", meta={"tag": "whole"}))
            raw.publish("tandem/v1/edge-1/up/activation", whole, 0)
            small = pack(activation(np.zeros(4, np.float32), device_id="edge-1", meta={"tag": "small"}))
            raw.publish("tandem/v1/edge-1/up/activation", small, 1).wait_for_publish(5)
        assert hub.recv(timeout=5).meta == {"tag": "small"}
        # A 2 MB activation gets through in chunks.
        big = np.random.default_rng(2).standard_normal(500_000).astype(np.float32)
        edge.send(activation(big, meta={"tag": "chunked"}))
        got = hub.recv(timeout=10)
        assert got.meta == {"tag": "chunked"}
        np.testing.assert_array_equal(got.arrays()["x"], big)
        with pytest.raises(ChannelTimeout):
            hub.recv(timeout=0.3)


def test_broker_max_packet_size_lowers_the_chunk_size(mosquitto_factory: Callable[..., Mosquitto]) -> None:
    broker = mosquitto_factory(max_packet_size=100_000)
    hub = MqttServer(port=broker.port)
    edge = MqttClient(device_id="edge-1", port=broker.port)  # max_payload_bytes 256 KiB, over the broker's limit
    with channels(hub, edge):
        assert edge.max_payload_bytes < 100_000
        big = np.random.default_rng(3).standard_normal(300_000).astype(np.float32)
        edge.send(activation(big))
        np.testing.assert_array_equal(hub.recv(timeout=10).arrays()["x"], big)
        assert edge.connected  # a packet over the limit would have got it disconnected


def test_bad_payload_names_sender_and_field_and_hub_keeps_serving(mosquitto: Mosquitto) -> None:
    hub = MqttServer(port=mosquitto.port)
    edge = MqttClient(device_id="edge-1", port=mosquitto.port)
    with channels(hub, edge), raw_paho(mosquitto) as (raw, _):
        raw.publish("tandem/v1/edge-9/up/activation", b"not an envelope", 1).wait_for_publish(5)
        with pytest.raises(MalformedHeader, match=r"payload starts with b'not ', expected b'TDM1'") as info:
            hub.recv(timeout=5)
        assert info.value.sender == "edge-9"
        assert info.value.field == "magic"

        truncated = pack(activation(np.ones(100, np.float32), device_id="edge-9"))[:-10]
        raw.publish("tandem/v1/edge-9/up/activation", truncated, 1).wait_for_publish(5)
        with pytest.raises(ProtocolError, match="tensors promise 400 bytes, payload holds 390") as info:
            hub.recv(timeout=5)
        assert (info.value.sender, info.value.field) == ("edge-9", "tensors")

        bad_chunk = CHUNK_MAGIC + bytes(16) + (3).to_bytes(4, "little") + (2).to_bytes(4, "little") + bytes(12)
        raw.publish("tandem/v1/edge-8/up/activation", bad_chunk, 1).wait_for_publish(5)
        with pytest.raises(ProtocolError, match="index 3 is not below the count of 2") as info:
            hub.recv(timeout=5)
        assert (info.value.sender, info.value.field) == ("edge-8", "chunk.index")

        edge.send(activation(np.ones(3, np.float32)))
        assert hub.recv(timeout=5).sender == "edge-1"


def test_message_on_another_devices_topic_is_rejected(mosquitto: Mosquitto) -> None:
    hub = MqttServer(port=mosquitto.port)
    with channels(hub), raw_paho(mosquitto) as (raw, _):
        spoofed = pack(activation(np.ones(3, np.float32), device_id="edge-a"))
        raw.publish("tandem/v1/edge-b/up/activation", spoofed, 1).wait_for_publish(5)
        with pytest.raises(MalformedHeader, match="a message on a topic the device does not own") as info:
            hub.recv(timeout=5)
        assert (info.value.sender, info.value.field, info.value.device_id) == ("edge-b", "device", "edge-a")

        mislabelled = pack(Envelope(Kind.RESULT, device_id="edge-b"))
        raw.publish("tandem/v1/edge-b/up/activation", mislabelled, 1).wait_for_publish(5)
        with pytest.raises(MalformedHeader, match="kind: header says 'result' but the message came on a 'activation'"):
            hub.recv(timeout=5)


def test_send_checks_routing_arguments(mosquitto: Mosquitto) -> None:
    hub = MqttServer(port=mosquitto.port)
    edge = MqttClient(device_id="edge-1", port=mosquitto.port)
    with channels(hub, edge):
        with pytest.raises(ValueError, match=r"MqttServer.send needs to=<device id>"):
            hub.send(Envelope(Kind.PLAN))
        with pytest.raises(ValueError, match=r"device id 'a/b' cannot be used in an MQTT topic"):
            hub.send(Envelope(Kind.PLAN), to="a/b")
        with pytest.raises(ValueError, match="envelope device_id 'edge-2' does not match the topic's device 'edge-1'"):
            edge.send(Envelope(Kind.HELLO, device_id="edge-2"))
    with pytest.raises(ChannelClosed, match="MqttClient is closed"):
        edge.send(Envelope(Kind.HELLO))
    with pytest.raises(ChannelClosed, match="MqttServer is closed"):
        hub.recv(timeout=0.1)
    edge.close()  # idempotent


def test_close_wakes_a_blocked_recv(mosquitto: Mosquitto) -> None:
    hub = MqttServer(port=mosquitto.port)
    outcome: list[BaseException] = []

    def wait_forever() -> None:
        try:
            hub.recv()
        except ChannelClosed as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    time.sleep(0.1)
    hub.close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert [str(e) for e in outcome] == ["MqttServer is closed"]


def test_deliver_to_pushes_queued_then_live_messages_in_order_on_pahos_thread(mosquitto: Mosquitto) -> None:
    hub = MqttServer(port=mosquitto.port)
    edge = MqttClient(device_id="edge-1", port=mosquitto.port, qos={Kind.ACTIVATION: 1})
    pushed: list[tuple[Envelope | BaseException, str]] = []

    def handler(item: Envelope | BaseException) -> None:
        pushed.append((item, threading.current_thread().name))

    with channels(hub, edge), raw_paho(mosquitto) as (raw, _):
        for i in range(3):  # queued for recv before the handler is set
            edge.send(activation(np.full(4, i, np.float32)))
        wait_until(lambda: hub._inbox.qsize() == 3)
        assert hub.deliver_to(handler) is True
        assert len(pushed) == 3  # handed over at once, on this thread
        for i in range(3, 6):
            edge.send(activation(np.full(4, i, np.float32)))
        wait_until(lambda: len(pushed) == 6)
        raw.publish("tandem/v1/edge-9/up/activation", b"not an envelope", 1).wait_for_publish(5)
        wait_until(lambda: len(pushed) == 7)
        envelopes = [item for item, _ in pushed[:6]]
        assert all(isinstance(e, Envelope) and e.sender == "edge-1" for e in envelopes)
        assert [int(e.arrays()["x"][0]) for e in envelopes if isinstance(e, Envelope)] == list(range(6))
        assert all(name != threading.current_thread().name for _, name in pushed[3:])  # paho's thread
        rejected = pushed[6][0]
        assert isinstance(rejected, MalformedHeader) and rejected.sender == "edge-9"
        with pytest.raises(ChannelTimeout):
            hub.recv(timeout=0.2)  # pushed, not queued

        assert hub.deliver_to(None) is True
        edge.send(activation(np.full(4, 7, np.float32)))
        assert int(hub.recv(timeout=5).arrays()["x"][0]) == 7
        assert len(pushed) == 7

        hub.deliver_to(handler)
    closings = [item for item, _ in pushed[7:]]
    assert [type(item) for item in closings] == [ChannelClosed]
    assert str(closings[0]) == "MqttServer is closed"


def test_receive_forever_runs_handlers_on_the_network_thread_and_ends_at_close(mosquitto: Mosquitto) -> None:
    hub = MqttServer(port=mosquitto.port)
    edge = MqttClient(device_id="edge-1", port=mosquitto.port)
    seen: list[tuple[str, str]] = []
    rejected: list[ProtocolError] = []
    stop = threading.Event()

    def on_message(envelope: Envelope) -> None:
        seen.append((envelope.sender or "", threading.current_thread().name))
        if envelope.meta.get("boom"):
            raise RuntimeError("handler failed")

    loop = threading.Thread(
        target=receive_forever,
        args=(hub, stop),
        kwargs={
            "on_message": on_message,
            "on_rejected": rejected.append,
            "logger": logging.getLogger("test"),
            "poll_s": 0.05,
        },
        name="receive-loop",
    )
    with channels(hub, edge), raw_paho(mosquitto) as (raw, _):
        loop.start()
        boom = activation(np.ones(2, np.float32))
        boom.meta["boom"] = True
        edge.send(boom)  # a failing handler does not end the loop
        edge.send(activation(np.ones(2, np.float32)))
        raw.publish("tandem/v1/edge-9/up/activation", b"junk", 1).wait_for_publish(5)
        wait_until(lambda: len(seen) == 2 and len(rejected) == 1)
        assert {sender for sender, _ in seen} == {"edge-1"}
        assert "receive-loop" not in {thread for _, thread in seen}
        assert rejected[0].sender == "edge-9"
    loop.join(2)  # the channel closed: the loop ends without stop being set
    assert not loop.is_alive()
    assert not stop.is_set()


def test_from_config_round_trip_with_qos_overrides(mosquitto: Mosquitto) -> None:
    config = MqttConfig(port=mosquitto.port, topic_prefix="site7/tandem", qos={Kind.ACTIVATION: 1})
    hub = MqttServer.from_config(config)
    edge = MqttClient.from_config(config, device_id="cam-3")
    with channels(hub, edge), raw_paho(mosquitto, subscribe="site7/tandem/#") as (_, wire):
        edge.send(activation(np.ones(4, np.float32)))
        assert hub.recv(timeout=5).sender == "cam-3"
        wait_until(lambda: len(wire) == 1)
        assert (wire[0].topic, wire[0].qos, wire[0].payload[:4]) == (
            "site7/tandem/cam-3/up/activation", 1, PACKED_MAGIC
        )
    with pytest.raises(ValueError, match=r"MqttClient\.from_config needs device_id"):
        MqttClient.from_config(config)
    # What `tandem hub` prints as where it listens.
    assert hub.address == f"mqtt://127.0.0.1:{mosquitto.port} topics site7/tandem/+/up/+"
    assert edge.address == f"mqtt://127.0.0.1:{mosquitto.port} topics site7/tandem/cam-3/down/+"


def test_round_trip_over_tls(mosquitto_tls: Mosquitto, tls_files: TlsFiles) -> None:
    tls = TlsConfig(ca_file=tls_files.ca_file)
    port = mosquitto_tls.tls_port
    assert port is not None
    hub = MqttServer(port=port, tls=tls)
    edge = MqttClient(device_id="edge-tls", host="localhost", port=port, tls=tls)
    with channels(hub, edge):
        edge.send(activation(np.arange(1000, dtype=np.float32)))
        got = hub.recv(timeout=5)
        assert got.sender == "edge-tls"
        hub.send(_echo(got), to=got.sender)
        np.testing.assert_array_equal(edge.recv(timeout=5).arrays()["x"], np.arange(1000, dtype=np.float32))


def test_tls_with_the_wrong_ca_is_a_connect_error(mosquitto_tls: Mosquitto, tmp_path: Path) -> None:
    other = make_test_certificates(tmp_path / "other-ca")
    port = mosquitto_tls.tls_port
    with pytest.raises(ConnectError, match=rf"127\.0\.0\.1:{port}: .*CERTIFICATE_VERIFY_FAILED"):
        MqttServer(port=port, tls=TlsConfig(ca_file=other.ca_file))


def test_a_missing_tls_file_is_named_with_its_setting(tls_files: TlsFiles, tmp_path: Path) -> None:
    missing = tmp_path / "certs" / "nope.pem"
    with pytest.raises(ConnectError, match=r"tls\.ca_file: .*certs/nope\.pem not found"):
        MqttServer(port=free_port(), tls=TlsConfig(ca_file=missing))
    with pytest.raises(ConnectError, match=r"tls\.key_file: .*certs/nope\.pem not found"):
        MqttClient(device_id="cam", port=free_port(), tls=TlsConfig(ca_file=tls_files.ca_file, key_file=missing))


def test_no_broker_is_a_connect_error_naming_host_and_port() -> None:
    port = free_port()
    with pytest.raises(ConnectError, match=rf"cannot connect to the MQTT broker at 127\.0\.0\.1:{port}: .*refused"):
        MqttClient(device_id="edge-1", port=port, connect_timeout_s=2)


def test_a_client_that_does_not_wait_starts_before_its_broker_and_connects_when_it_comes(
    mosquitto_factory: Callable[..., Mosquitto],
) -> None:
    port = free_port()
    started = time.monotonic()
    edge = MqttClient(device_id="edge-1", port=port, wait_for_broker=False, **FAST_RECONNECT)
    with channels(edge):
        assert time.monotonic() - started < 5.0  # it did not wait for a broker (connect_timeout_s is 10 s)
        assert not edge.connected
        with pytest.raises(ConnectError, match=rf"not connected to the MQTT broker at 127\.0\.0\.1:{port}"):
            edge.send(activation(np.ones(2, np.float32)))
        broker = mosquitto_factory(port=port)
        hub = MqttServer(port=broker.port)
        with channels(hub):
            wait_until(lambda: edge.connected, timeout=10)
            deadline = time.monotonic() + 10
            while True:  # the edge's SUBACK may trail its CONNACK: until then a reply would find no subscriber
                request = activation(np.arange(4, dtype=np.float32))
                edge.send(request)
                got = hub.recv(timeout=5)
                hub.send(got.reply(Kind.RESULT), to=got.sender)
                try:
                    answer = edge.recv(timeout=0.5)
                    break
                except ChannelTimeout:
                    assert time.monotonic() < deadline, "the late-connected edge never heard the hub"
            assert (answer.kind, answer.request_id) == (Kind.RESULT, request.request_id)


def test_an_edge_opened_without_waiting_starts_while_the_broker_is_down() -> None:
    # What `tandem edge` does: it serves locally until the broker answers, as over ZeroMQ.
    port = free_port()
    edge = open_client(MqttConfig(port=port), device_id="edge-1", wait=False)
    with channels(edge):
        assert isinstance(edge, MqttClient) and not edge.connected
    with pytest.raises(ConnectError, match=rf"cannot connect to the MQTT broker at 127\.0\.0\.1:{port}"):
        open_client(MqttConfig(port=port, connect_timeout_s=2), device_id="edge-1")


def test_closing_a_client_that_never_reached_its_broker_is_quick() -> None:
    """Quick means not waiting out the reconnect backoff (30 s here); paho's loop itself sleeps in 1 s steps."""
    edge = MqttClient(device_id="edge-1", port=free_port(), wait_for_broker=False, reconnect_min_s=30)
    started = time.monotonic()
    edge.close()
    assert time.monotonic() - started < 10.0
    with pytest.raises(ChannelClosed):
        edge.recv(timeout=0.1)


def test_refused_credentials_are_a_connect_error(mosquitto_factory: Callable[..., Mosquitto]) -> None:
    broker = mosquitto_factory(allow_anonymous=False)
    with pytest.raises(ConnectError, match=rf"broker at 127\.0\.0\.1:{broker.port} refused the connection: Not auth"):
        MqttServer(port=broker.port, username="hub", password="wrong")


def test_shared_group_splits_messages_between_hub_replicas(mosquitto: Mosquitto) -> None:
    hubs = [MqttServer(port=mosquitto.port, shared_group="hubs", session_expiry_s=0) for _ in range(2)]
    edge = MqttClient(device_id="edge-1", port=mosquitto.port, qos={Kind.TELEMETRY: 1})
    with channels(*hubs, edge):
        sent = set()
        for i in range(100):
            message = Envelope(Kind.TELEMETRY, meta={"i": i})
            sent.add(message.request_id)
            edge.send(message)
        received: list[list[str]] = [[], []]
        deadline = time.monotonic() + 10
        while sum(map(len, received)) < 100 and time.monotonic() < deadline:
            for hub, got in zip(hubs, received, strict=True):
                with suppress(ChannelTimeout):
                    got.append(hub.recv(timeout=0.05).request_id)
        assert all(len(got) > 0 for got in received), [len(got) for got in received]
        assert sorted(received[0] + received[1]) == sorted(sent)
        for hub in hubs:
            with pytest.raises(ChannelTimeout):
                hub.recv(timeout=0.2)


def test_qos1_sent_while_broker_is_down_arrives_after_restart(mosquitto_factory: Callable[..., Mosquitto]) -> None:
    broker = mosquitto_factory(persistence=True)
    hub = MqttServer(port=broker.port, **FAST_RECONNECT)
    edge = MqttClient(device_id="edge-1", port=broker.port, **FAST_RECONNECT)
    with channels(hub, edge):
        broker.stop()
        wait_until(lambda: not edge.connected and not hub.connected)
        with pytest.raises(ConnectError, match=rf"not connected to the MQTT broker at 127\.0\.0\.1:{broker.port}"):
            edge.send(activation(np.ones(2, np.float32)))  # QoS 0: refused while down
        hello = Envelope(Kind.HELLO, meta={"boot": 1})  # QoS 1: queued by paho
        edge.send(hello)
        broker.start()
        got = hub.recv(timeout=10)
        assert (got.kind, got.request_id, got.sender) == (Kind.HELLO, hello.request_id, "edge-1")
        hub.send(got.reply(Kind.ACK), to="edge-1")  # the hub resubscribed and answers
        assert edge.recv(timeout=10).kind is Kind.ACK


def test_hub_session_keeps_qos1_messages_while_the_hub_is_away(mosquitto_factory: Callable[..., Mosquitto]) -> None:
    broker = mosquitto_factory(persistence=True)
    hub = MqttServer(port=broker.port, client_id="hub-persistent", **FAST_RECONNECT)
    edge = MqttClient(device_id="edge-1", port=broker.port, **FAST_RECONNECT)
    with channels(edge):
        hub.close()  # the broker keeps its session (subscription + queue) for session_expiry_s
        hello = Envelope(Kind.HELLO, meta={"while": "hub away"})
        edge.send(hello)
        broker.restart()  # the queued message survives in the broker's persistence file
        wait_until(lambda: edge.connected, timeout=10)
        back = MqttServer(port=broker.port, client_id="hub-persistent", **FAST_RECONNECT)
        with channels(back):
            got = back.recv(timeout=10)
            assert (got.request_id, got.meta, got.sender) == (hello.request_id, {"while": "hub away"}, "edge-1")


def answer_each_message(hub: MqttServer, kind: Kind) -> None:
    """Have ``hub`` answer every envelope it receives with an empty ``kind`` one, from paho's thread."""

    def answer(envelope: Envelope | Exception) -> None:
        if isinstance(envelope, Envelope):
            hub.send(Envelope(kind, envelope.request_id, envelope.device_id), to=envelope.device_id)

    hub.deliver_to(answer)


def test_back_to_back_answers_through_a_nagle_broker_are_not_held_for_a_delayed_ack(mosquitto: Mosquitto) -> None:
    """Mosquitto's default ``set_tcp_nodelay false`` held the second of two answers until the edge acknowledged
    the first: ~45 ms on the first such pair of every new connection, before the edge acknowledged at once."""
    # The held ACK costs at least Linux's 40 ms minimum on each new connection's first pair; a stall of this host
    # can cost as much once. So: three new connections, and the median of their first pairs.
    hub = MqttServer(port=mosquitto.port, session_expiry_s=0)
    round_trips = []
    with channels(hub):
        answer_each_message(hub, Kind.HEARTBEAT)
        for _ in range(3):
            edge = MqttClient(device_id="cam-1", port=mosquitto.port, session_expiry_s=0)
            with channels(edge):
                edge.send(Envelope(Kind.HEARTBEAT, device_id="cam-1"))
                started = time.perf_counter()
                probe = Envelope.with_arrays(Kind.HEARTBEAT, {"probe": np.zeros(32_768, np.uint8)}, device_id="cam-1")
                edge.send(probe)
                edge.recv(timeout=5)
                edge.recv(timeout=5)
                round_trips.append((time.perf_counter() - started) * 1000)
    assert sorted(round_trips)[1] < 35, f"round trips of the second message (ms): {round_trips}"


def test_a_qos1_request_and_answer_through_a_nagle_broker_take_milliseconds_not_a_delayed_ack(
    mosquitto: Mosquitto,
) -> None:
    """The broker sent its PUBACK, then held the answer until the edge acknowledged that PUBACK: 42-45 ms each."""
    qos = dict.fromkeys(Kind, 1)
    hub = MqttServer(port=mosquitto.port, session_expiry_s=0, qos=qos)
    edge = MqttClient(device_id="cam-1", port=mosquitto.port, session_expiry_s=0, qos=qos)
    with channels(hub, edge):
        answer_each_message(hub, Kind.RECORD)
        round_trips = []
        for _ in range(10):
            started = time.perf_counter()
            edge.send(Envelope(Kind.RECORD, device_id="cam-1"))
            edge.recv(timeout=5)
            round_trips.append((time.perf_counter() - started) * 1000)
            time.sleep(0.05)
    # Each held answer costs at least Linux's 40 ms delayed-ACK minimum; a stall of this host costs that rarely.
    assert sorted(round_trips)[len(round_trips) // 2] < 35, f"round trips (ms): {round_trips}"


def test_quick_acks_are_left_to_the_kernel_for_large_reads_and_to_the_traffic_within_a_stream(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    class RecordingSocket(socket.socket):
        acks = 0

        def setsockopt(self, *args: object) -> None:  # type: ignore[override]
            RecordingSocket.acks += 1

    class FakeClient:
        def socket(self) -> RecordingSocket:
            return sock

    sock = RecordingSocket()
    now = [1000.0]  # the channel's clock, moved by hand: a stream's reads are 1 ms apart whatever this host does
    clock = SimpleNamespace(**{name: getattr(time, name) for name in ("time", "sleep", "perf_counter")})
    clock.monotonic = lambda: now[0]
    edge = MqttClient(device_id="cam-1", port=mosquitto.port, session_expiry_s=0)
    with channels(edge), closing(sock), monkeypatch.context() as patched:
        patched.setattr(mqtt_channel, "time", clock)
        edge._acknowledge(FakeClient(), 64 << 10)  # type: ignore[arg-type]  # the kernel ACKs this one at once
        assert RecordingSocket.acks == 0
        now[0] += 0.01
        for _ in range(6):  # a stream: after 4 reads in a row, its own segments carry the ACKs
            edge._acknowledge(FakeClient(), 100)  # type: ignore[arg-type]
            now[0] += 0.001
        assert RecordingSocket.acks == 4
        now[0] += 0.01
        edge._acknowledge(FakeClient(), 0)  # type: ignore[arg-type]  # a PUBACK after a pause
        assert RecordingSocket.acks == 5
