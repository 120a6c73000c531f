"""The namespace test bed itself: the shaper delivers its configured rate, a cut drops, cleanup is total."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from tests.fixtures.netns import EDGE_IP, HUB_IP, DelayRelay, NetnsLink, Shape, missing_reason

# TCP payload per frame on a 1500-byte MTU with timestamps: 1448 of the 1514 bytes tbf counts.
PAYLOAD_SHARE = 1448 / 1514


def _pair(link: NetnsLink) -> tuple[socket.socket, socket.socket]:
    """A TCP connection from the edge namespace (client) to the hub namespace (server side)."""
    server = link.call("hub", lambda: socket.create_server((HUB_IP, 0)))
    port = server.getsockname()[1]
    client = link.call("edge", lambda: socket.create_connection((HUB_IP, port), timeout=10))
    accepted, _ = server.accept()
    server.close()
    return client, accepted


def _goodput_mbit(sender: socket.socket, receiver: socket.socket, seconds: float) -> float:
    """Payload Mbit/s the receiver sees, after the first 0.3 s (the bucket's burst and slow start)."""
    stop = threading.Event()

    def pump() -> None:
        chunk = b"x" * 65536
        while not stop.is_set():
            try:
                sender.sendall(chunk)
            except OSError:
                return

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    receiver.settimeout(5)
    first = time.monotonic()
    counted, t0 = 0, None
    while time.monotonic() - first < seconds + 0.3:
        got = len(receiver.recv(1 << 20))
        if t0 is None and time.monotonic() - first >= 0.3:
            t0 = time.monotonic()
        elif t0 is not None:
            counted += got
    elapsed = time.monotonic() - t0 if t0 is not None else 1.0
    stop.set()
    sender.close()
    thread.join(timeout=5)
    return counted * 8 / elapsed / 1e6


@pytest.mark.parametrize("rate_mbit", [2.0, 20.0])
def test_the_shaper_delivers_its_configured_rate(netns_link: NetnsLink, rate_mbit: float) -> None:
    # A queue of a second at the rate: TCP's losses are recovered while the queue still feeds the link.
    netns_link.shape(Shape.for_rate(rate_mbit, limit_bytes=int(rate_mbit * 1e6 / 8)))
    client, server = _pair(netns_link)
    measured = _goodput_mbit(client, server, 1.5)
    server.close()
    expected = rate_mbit * PAYLOAD_SHARE
    # The kernel's rate, not this host's speed: a busy host can only deliver less, never more.
    assert 0.85 * expected <= measured <= 1.05 * expected, (measured, expected)


def test_the_downlink_has_its_own_shape(netns_link: NetnsLink) -> None:
    netns_link.shape(50.0, down=Shape.for_rate(2.0, limit_bytes=250_000))
    client, server = _pair(netns_link)
    measured = _goodput_mbit(server, client, 1.5)  # hub to edge
    client.close()
    assert 0.85 * 2 * PAYLOAD_SHARE <= measured <= 1.05 * 2 * PAYLOAD_SHARE, measured


def test_a_cut_drops_silently_and_restore_delivers_on_the_same_connection(netns_link: NetnsLink) -> None:
    netns_link.shape(10.0)
    client, server = _pair(netns_link)
    netns_link.cut()
    client.sendall(b"during the cut")
    server.settimeout(0.5)
    with pytest.raises(TimeoutError):
        server.recv(100)
    netns_link.restore()
    server.settimeout(10)
    assert server.recv(100) == b"during the cut"  # TCP retransmitted it; the connection survived
    client.close()
    server.close()


def test_namespaces_are_deleted_even_when_the_test_fails() -> None:
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    link = NetnsLink()
    with pytest.raises(RuntimeError, match="boom"), link:
        link.shape(Shape.for_rate(5.0))
        raise RuntimeError("boom")
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert link.edge_ns not in names and link.hub_ns not in names


def test_the_edge_namespace_has_its_own_address(netns_link: NetnsLink) -> None:
    client, server = _pair(netns_link)
    assert client.getsockname()[0] == EDGE_IP
    client.close()
    server.close()


def test_the_delay_relay_adds_the_rtt_it_claims_and_keeps_the_stream(netns_link: NetnsLink) -> None:
    server = netns_link.call("hub", lambda: socket.create_server((HUB_IP, 0)))
    relay = netns_link.call("hub", lambda: DelayRelay((HUB_IP, 0), server.getsockname()[:2], one_way_ms=20))
    client = netns_link.call("edge", lambda: socket.create_connection(relay.address, timeout=10))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    far, _ = server.accept()
    far.settimeout(10)
    rtts = []
    payload = bytes(range(256)) * 64  # 16 kB, several chunks: order must survive
    try:
        for _ in range(5):
            t0 = time.monotonic()
            client.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += far.recv(1 << 16)
            far.sendall(b"k")
            assert client.recv(1) == b"k"
            rtts.append(1000 * (time.monotonic() - t0))
            assert got == payload
    finally:
        relay.close()
        for sock in (client, far, server):
            sock.close()
    # 20 ms each way: never less (the relay holds every chunk); a busy host only adds.
    assert 40 <= min(rtts) < 40 + 25, rtts
