"""ZeroMQ channels over real TCP sockets on 127.0.0.1: routing, concurrency, bad input, limits, close, CURVE."""

from __future__ import annotations

import logging
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from tandem.transport.codec import CodecSpec
from tandem.transport.config import CurveConfig, ZmqConfig
from tandem.transport.envelope import Envelope, Kind, Limits, encode
from tandem.transport.errors import (
    ChannelClosed,
    ChannelTimeout,
    ConnectError,
    MalformedHeader,
    MessageTooLarge,
    ProtocolError,
    UnknownKind,
)
from tandem.transport.zmq_channel import SERVER_SENDER, ZmqClient, ZmqServer, generate_keypair

ANY_PORT = "tcp://127.0.0.1:*"
MakeClient = Callable[..., ZmqClient]


@pytest.fixture
def server() -> Iterator[ZmqServer]:
    channel = ZmqServer(address=ANY_PORT)
    yield channel
    channel.close()


@pytest.fixture
def make_client(server: ZmqServer) -> Iterator[MakeClient]:
    clients: list[ZmqClient] = []

    def make(device_id: str = "edge", **kwargs: object) -> ZmqClient:
        kwargs.setdefault("address", server.address)
        client = ZmqClient(device_id=device_id, connect_timeout_s=5.0, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def raw_dealer(server: ZmqServer) -> Iterator[zmq.Socket]:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"raw-peer")
    sock.connect(server.address)
    yield sock
    sock.close()
    context.term()


def activation(seed: int = 0, codec: str = "raw", **fields: Any) -> Envelope:
    rng = np.random.default_rng(seed)
    arrays = {"feat": rng.standard_normal((2, 8, 16, 16)).astype(np.float32), "mask": np.ones((2, 5), np.int64)}
    return Envelope.with_arrays(Kind.ACTIVATION, arrays, CodecSpec.parse(codec), device_id="edge", **fields)


def serve_echo(server: ZmqServer, stop: threading.Event) -> threading.Thread:
    """Answer every request with a RESULT carrying its tensors and meta, until ``stop``."""

    def loop() -> None:
        while not stop.is_set():
            try:
                request = server.recv(timeout=0.05)
            except ChannelTimeout:
                continue
            reply = request.reply(Kind.RESULT, meta=dict(request.meta), tensors=request.tensors, frames=request.frames)
            server.send(reply, to=request.sender)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("codec", "atol"), [("raw", 0.0), ("fp16+lz4", 5e-3), ("int8@1+zstd", 0.05)])
def test_round_trip_client_server_and_reply_to_sender(
    server: ZmqServer, make_client: MakeClient, codec: str, atol: float
) -> None:
    client = make_client("cam-01")
    request = activation(codec=codec, plan_id="resnet50", meta={"frame": 7})
    sent = {name: array.copy() for name, array in request.arrays().items()}
    client.send(request)

    received = server.recv(timeout=5)
    assert received.sender == client.routing_id
    assert received.sender.startswith("cam-01#")
    assert (received.kind, received.request_id, received.plan_id, received.meta) == (
        Kind.ACTIVATION,
        request.request_id,
        "resnet50",
        {"frame": 7},
    )
    arrays = received.arrays()
    spread = float(np.ptp(sent["feat"]))
    np.testing.assert_allclose(arrays["feat"], sent["feat"], rtol=0, atol=atol * spread)
    np.testing.assert_array_equal(arrays["mask"], sent["mask"])

    result = Envelope.with_arrays(Kind.RESULT, {"logits": arrays["feat"].mean(axis=(2, 3))}, CodecSpec.parse(codec))
    result.request_id = received.request_id
    server.send(result, to=received.sender)
    answer = client.recv(timeout=5)
    assert answer.sender == SERVER_SENDER
    assert answer.request_id == request.request_id
    np.testing.assert_allclose(
        answer.arrays()["logits"], arrays["feat"].mean(axis=(2, 3)), rtol=0, atol=atol * spread + 1e-7
    )


def test_several_clients_each_get_only_their_own_replies(server: ZmqServer, make_client: MakeClient) -> None:
    clients = {name: make_client(name) for name in ("cam-a", "cam-b", "cam-c")}
    stop = threading.Event()
    echo = serve_echo(server, stop)
    try:
        for i in range(20):
            for name, client in clients.items():
                client.send(activation(i, meta={"client": name, "i": i}))
        for name, client in clients.items():
            replies = [client.recv(timeout=5) for _ in range(20)]
            assert [r.meta for r in replies] == [{"client": name, "i": i} for i in range(20)]
            with pytest.raises(ChannelTimeout):
                client.recv(timeout=0.05)
    finally:
        stop.set()
        echo.join()


def test_concurrent_sends_from_many_threads_on_both_ends(server: ZmqServer, make_client: MakeClient) -> None:
    client = make_client("cam-01")
    threads, per_thread = 8, 40
    received: list[Envelope] = []
    replied = threading.Event()

    def hub() -> None:
        # Replies go out from worker threads while this thread sleeps in recv: the wake-up path.
        workers = []
        for _ in range(threads * per_thread):
            request = server.recv(timeout=10)
            received.append(request)
            worker = threading.Thread(
                target=server.send, args=(request.reply(Kind.ACK),), kwargs={"to": request.sender}
            )
            worker.start()
            workers.append(worker)
        for worker in workers:
            worker.join()
        replied.set()

    hub_thread = threading.Thread(target=hub, daemon=True)
    hub_thread.start()

    def sender(t: int) -> None:
        for i in range(per_thread):
            client.send(Envelope(Kind.HEARTBEAT, request_id=f"{t}-{i}", device_id="cam-01"))

    senders = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
    for thread in senders:
        thread.start()
    acks = [client.recv(timeout=10) for _ in range(threads * per_thread)]
    for thread in senders:
        thread.join()
    hub_thread.join(timeout=10)

    expected = {f"{t}-{i}" for t in range(threads) for i in range(per_thread)}
    assert replied.is_set()
    assert {e.request_id for e in received} == expected
    assert {e.request_id for e in acks} == expected
    assert {e.kind for e in acks} == {Kind.ACK}


def test_malformed_message_raises_named_protocol_error_and_server_keeps_serving(
    server: ZmqServer, make_client: MakeClient, raw_dealer: zmq.Socket
) -> None:
    raw_dealer.send_multipart([b"\xc1 this is not msgpack"])
    with pytest.raises(MalformedHeader, match="header") as bad_bytes:
        server.recv(timeout=5)
    assert bad_bytes.value.sender == "raw-peer"
    assert bad_bytes.value.field == "header"

    header = msgpack.packb({"v": 1, "kind": "teleport", "id": "req-9", "device": "rogue"})
    raw_dealer.send_multipart([header])
    with pytest.raises(UnknownKind, match="kind: unknown message kind 'teleport'") as bad_kind:
        server.recv(timeout=5)
    assert (bad_kind.value.sender, bad_kind.value.field, bad_kind.value.request_id) == ("raw-peer", "kind", "req-9")

    # The sender named by the error can be answered.
    server.send(Envelope(Kind.ERROR, request_id="req-9", meta={"code": bad_kind.value.code}), to=bad_kind.value.sender)
    assert msgpack.unpackb(raw_dealer.recv_multipart()[0])["meta"] == {"code": "unknown_kind"}

    client = make_client("cam-01")
    client.send(activation())
    assert server.recv(timeout=5).sender == client.routing_id


def test_message_over_the_size_limit_raises_message_too_large(make_client: MakeClient) -> None:
    limits = Limits(max_message_bytes=200_000)
    with ZmqServer(address=ANY_PORT, limits=limits) as small:
        client = make_client("cam-01", address=small.address)
        big = Envelope.with_arrays(
            Kind.ACTIVATION, {"a": np.zeros(30_000, np.float32), "b": np.zeros(30_000, np.float32)}
        )
        client.send(big)
        with pytest.raises(MessageTooLarge, match="over the limit of 200000") as excinfo:
            small.recv(timeout=5)
        assert excinfo.value.sender == client.routing_id
        assert excinfo.value.field == "message"

        client.send(activation())
        assert small.recv(timeout=5).kind == Kind.ACTIVATION


def test_frame_beyond_the_socket_limit_is_dropped_and_server_stays_up(make_client: MakeClient) -> None:
    limits = Limits(max_message_bytes=100_000, max_header_bytes=10_000)
    with ZmqServer(address=ANY_PORT, limits=limits) as small:
        flooder = make_client("flooder", address=small.address)
        flooder.send(Envelope.with_arrays(Kind.ACTIVATION, {"a": np.zeros(200_000, np.uint8)}))
        with pytest.raises(ChannelTimeout):
            small.recv(timeout=0.3)
        good = make_client("cam-01", address=small.address)
        good.send(Envelope(Kind.HELLO, device_id="cam-01"))
        assert small.recv(timeout=5).sender == good.routing_id


def test_recv_times_out(server: ZmqServer, make_client: MakeClient) -> None:
    client = make_client()
    for channel in (server, client):
        start = time.monotonic()
        with pytest.raises(ChannelTimeout, match=r"nothing received in 0\.1 s"):
            channel.recv(timeout=0.1)
        assert time.monotonic() - start >= 0.1


def test_use_after_close_raises_channel_closed_and_close_is_idempotent(make_client: MakeClient) -> None:
    server = ZmqServer(address=ANY_PORT)
    client = make_client(address=server.address)
    for channel in (client, server):
        channel.close()
        channel.close()
        with pytest.raises(ChannelClosed, match="closed"):
            channel.send(activation(), to="anyone")
        with pytest.raises(ChannelClosed, match="closed"):
            channel.recv(timeout=0.1)


def test_close_wakes_a_blocked_recv(server: ZmqServer) -> None:
    outcome: list[BaseException] = []

    def wait_forever() -> None:
        try:
            server.recv()
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    time.sleep(0.1)
    server.close()
    waiter.join(timeout=5)
    assert not waiter.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ChannelClosed)


def test_binding_an_address_in_use_raises_connect_error_naming_it(server: ZmqServer) -> None:
    with pytest.raises(ConnectError, match=re.escape(f"{server.address}: address already in use")):
        ZmqServer(address=server.address)


def test_send_to_an_unknown_client_raises_connect_error(server: ZmqServer) -> None:
    with pytest.raises(ConnectError, match="no connected client 'ghost#000000'"):
        server.send(activation(), to="ghost#000000")
    with pytest.raises(ConnectError, match="needs to="):
        server.send(activation())


def test_client_without_a_server(server: ZmqServer) -> None:
    free = server.address  # a port nobody listens on once this server is closed
    server.close()
    with pytest.raises(ConnectError, match=re.escape(f"{free} within 0.2 s: no server answered")):
        ZmqClient(address=free, device_id="cam-01", connect_timeout_s=0.2)
    with ZmqClient(address=free, device_id="cam-01", connect_timeout_s=None) as client:
        with pytest.raises(ConnectError, match="not connected"):
            client.send(activation())
        with pytest.raises(ChannelTimeout):
            client.recv(timeout=0.05)


def test_from_config_round_trip() -> None:
    config = ZmqConfig(address=ANY_PORT, send_hwm=50, recv_hwm=50)
    with ZmqServer.from_config(config) as server:
        client_config = config.model_copy(update={"address": server.address})
        with ZmqClient.from_config(client_config, device_id="cam-07") as client:
            client.send(Envelope(Kind.HELLO, device_id="cam-07"))
            hello = server.recv(timeout=5)
            assert hello.sender.startswith("cam-07#")
            assert hello.device_id == "cam-07"


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:not-a-port", "udp://127.0.0.1:5555"])
def test_a_bad_endpoint_raises_connect_error_naming_it(address: str) -> None:
    with pytest.raises(ConnectError, match=re.escape(f"cannot bind ZeroMQ server to {address}")):
        ZmqServer(address=address)
    with pytest.raises(ConnectError, match=re.escape(f"cannot connect ZeroMQ client to {address}")):
        ZmqClient(address=address, device_id="cam-01", connect_timeout_s=None)


def test_a_bad_socket_option_raises_connect_error() -> None:
    with pytest.raises(ConnectError, match=re.escape(f"cannot set up a ZeroMQ server on {ANY_PORT}: Invalid argument")):
        ZmqServer(address=ANY_PORT, send_hwm=-1)


def test_bad_device_id_is_refused() -> None:
    with pytest.raises(ValueError, match="device_id ''"):
        ZmqClient(address="tcp://127.0.0.1:1", device_id="", connect_timeout_s=None)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Server, edge and rogue key pairs; only the edge's public key is authorised."""
    server_public, server_secret = generate_keypair(tmp_path / "server", "hub")
    edge_public, edge_secret = generate_keypair(tmp_path / "edge", "cam-01")
    _, rogue_secret = generate_keypair(tmp_path / "rogue", "rogue")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(edge_public, authorized / edge_public.name)
    return {
        "server_public": server_public,
        "server_secret": server_secret,
        "edge_secret": edge_secret,
        "rogue_secret": rogue_secret,
        "authorized": authorized,
    }


def test_generate_keypair_writes_loadable_private_keys_and_refuses_to_overwrite(tmp_path: Path) -> None:
    public, secret = generate_keypair(tmp_path, "cam-01")
    assert (public.name, secret.name) == ("cam-01.key", "cam-01.key_secret")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    loaded_public, loaded_secret = zmq.auth.load_certificate(secret)
    assert loaded_secret is not None
    assert zmq.auth.load_certificate(public) == (loaded_public, None)
    with pytest.raises(FileExistsError, match=r"cam-01\.key"):
        generate_keypair(tmp_path, "cam-01")
    assert generate_keypair(tmp_path, "cam-01", overwrite=True) == (public, secret)


def test_curve_admits_an_authorised_client_and_shuts_out_another(
    keys: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tandem.transport.zmq.auth")
    server_curve = CurveConfig(secret_key_file=keys["server_secret"], authorized_clients_dir=keys["authorized"])
    with ZmqServer(address=ANY_PORT, curve=server_curve) as server:

        def curve_client(secret: Path, **kwargs: object) -> ZmqClient:
            curve = CurveConfig(secret_key_file=secret, server_public_key_file=keys["server_public"])
            return ZmqClient(address=server.address, device_id="cam", curve=curve, **kwargs)  # type: ignore[arg-type]

        with pytest.raises(ConnectError, match="rejected this client's CURVE key"):
            curve_client(keys["rogue_secret"], connect_timeout_s=5.0)
        with curve_client(keys["rogue_secret"], connect_timeout_s=None) as rogue:
            with pytest.raises(ConnectError, match="not connected"):
                rogue.send(Envelope(Kind.HELLO, device_id="rogue"))
            with pytest.raises(ChannelTimeout):
                rogue.recv(timeout=0.2)
            with pytest.raises(ChannelTimeout):
                server.recv(timeout=0.2)

            with curve_client(keys["edge_secret"], connect_timeout_s=5.0) as edge:
                edge.send(activation())
                request = server.recv(timeout=5)
                assert request.sender == edge.routing_id
                server.send(request.reply(Kind.RESULT), to=request.sender)
                assert edge.recv(timeout=5).request_id == request.request_id
    # Seen at the default level, and once, although the rogue key was refused on every (re)connect.
    refusals = [r for r in caplog.records if r.levelno == logging.WARNING and "refused a client" in r.message]
    assert len(refusals) == 1, [r.message for r in refusals]
    assert "DENIED (CURVE)" in refusals[0].message and "curve.authorized_clients_dir" in refusals[0].message


def test_curve_client_needs_the_server_public_key(keys: dict[str, Path]) -> None:
    curve = CurveConfig(secret_key_file=keys["edge_secret"])
    with pytest.raises(ConnectError, match=r"curve\.server_public_key_file"):
        ZmqClient(address="tcp://127.0.0.1:1", device_id="cam", curve=curve, connect_timeout_s=None)
    not_a_folder = CurveConfig(secret_key_file=keys["server_secret"], authorized_clients_dir=keys["server_public"])
    with pytest.raises(ConnectError, match=r"curve\.authorized_clients_dir: .*hub\.key is not a directory"):
        ZmqServer(address=ANY_PORT, curve=not_a_folder)
    missing = CurveConfig(secret_key_file=keys["authorized"] / "nope.key_secret")
    with pytest.raises(ConnectError, match=r"curve\.secret_key_file: CURVE key file .*nope\.key_secret not found"):
        ZmqServer(address=ANY_PORT, curve=missing)
    garbled = keys["authorized"].parent / "garbled.key_secret"
    garbled.write_text("not a key\n")
    with pytest.raises(ConnectError, match=r"curve\.secret_key_file: cannot load CURVE key file .*garbled\.key_secret"):
        ZmqServer(address=ANY_PORT, curve=CurveConfig(secret_key_file=garbled))


def test_truncated_tensor_frame_names_its_field(server: ZmqServer, raw_dealer: zmq.Socket) -> None:
    """Bad frames after a good header are reported too, with the sender to answer."""
    header, frame = encode(Envelope.with_arrays(Kind.ACTIVATION, {"x": np.zeros(16, np.float32)}))
    raw_dealer.send_multipart([header, bytes(frame)[:10]])
    with pytest.raises(ProtocolError, match=r"tensors\['x'\].nbytes: header promises 64 bytes, frame holds 10") as exc:
        server.recv(timeout=5)
    assert exc.value.sender == "raw-peer"


def test_a_peer_with_a_binary_routing_id_can_be_answered(server: ZmqServer) -> None:
    context = zmq.Context()
    anonymous = context.socket(zmq.DEALER)  # no ROUTING_ID: the ROUTER makes up a binary one
    try:
        anonymous.connect(server.address)
        anonymous.send_multipart(encode(Envelope(Kind.HELLO, request_id="hi")))
        hello = server.recv(timeout=5)
        assert hello.sender is not None
        server.send(hello.reply(Kind.ACK), to=hello.sender)
        assert anonymous.poll(5000)
        assert msgpack.unpackb(anonymous.recv_multipart()[0])["id"] == "hi"
    finally:
        anonymous.close(linger=0)
        context.term()
