"""The link emulator around in-process channels: serialisation time, RTT, queueing, rate changes, order, errors.

These are behaviour tests with generous bounds, not speed targets: a delay must
never come early, and may come late by scheduling slack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tandem.transport.config import LinkConfig
from tandem.transport.envelope import Envelope, Kind
from tandem.transport.errors import ChannelClosed, ChannelTimeout, ConnectError, MalformedHeader
from tandem.transport.inproc import InProcServer
from tandem.transport.link import EmulatedLink, encoded_size

SLACK_S = 0.15  # scheduling jitter allowed on a loaded 2-core machine


@pytest.fixture
def server() -> Iterator[InProcServer]:
    channel = InProcServer()
    yield channel
    channel.close()


def payload(nbytes: int, **fields: Any) -> Envelope:
    return Envelope.with_arrays(Kind.ACTIVATION, {"x": np.zeros(nbytes, np.uint8)}, device_id="edge", **fields)


def serialisation_s(envelope: Envelope, mbps: float) -> float:
    return encoded_size(envelope) * 8 / (mbps * 1e6)


def time_to_arrive(link: EmulatedLink, server: InProcServer, envelope: Envelope) -> float:
    start = time.monotonic()
    link.send(envelope)
    server.recv(timeout=5)
    return time.monotonic() - start


def test_a_message_takes_its_serialisation_time(server: InProcServer) -> None:
    message = payload(50_000)
    expected = serialisation_s(message, 4.0)  # about 0.1 s
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=4.0, rtt_ms=0) as link:
        elapsed = time_to_arrive(link, server, message)
    assert expected <= elapsed < expected + SLACK_S


def test_send_does_not_block(server: InProcServer) -> None:
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=1.0, rtt_ms=200) as link:
        start = time.monotonic()
        link.send(payload(50_000))  # 0.4 s on the wire
        assert time.monotonic() - start < 0.05


def test_rtt_adds_half_each_way(server: InProcServer) -> None:
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=None, rtt_ms=200) as link:
        start = time.monotonic()
        link.send(payload(10))
        request = server.recv(timeout=5)
        uplink = time.monotonic() - start
        server.send(request.reply(Kind.RESULT), to=request.sender)
        reply = link.recv(timeout=5)
        round_trip = time.monotonic() - start
    assert reply.request_id == request.request_id
    assert reply.sender == "server"
    assert 0.1 <= uplink < 0.1 + SLACK_S
    assert 0.2 <= round_trip < 0.2 + SLACK_S


def test_downlink_rate_delays_what_the_edge_receives(server: InProcServer) -> None:
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=None, rtt_ms=0, downlink_mbps=4.0) as link:
        reply = payload(50_000)
        start = time.monotonic()
        server.send(reply, to="edge")
        link.recv(timeout=5)
        elapsed = time.monotonic() - start
    expected = serialisation_s(reply, 4.0)
    assert expected <= elapsed < expected + SLACK_S


def test_back_to_back_messages_queue_behind_each_other(server: InProcServer) -> None:
    first, second = payload(25_000, meta={"n": 1}), payload(25_000, meta={"n": 2})
    each = serialisation_s(first, 4.0)  # about 0.05 s
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=4.0, rtt_ms=20) as link:
        start = time.monotonic()
        link.send(first)
        link.send(second)
        assert server.recv(timeout=5).meta == {"n": 1}
        after_first = time.monotonic() - start
        assert server.recv(timeout=5).meta == {"n": 2}
        after_second = time.monotonic() - start
    assert each + 0.01 <= after_first < each + 0.01 + SLACK_S
    assert 2 * each + 0.01 <= after_second < 2 * each + 0.01 + SLACK_S


def test_set_link_changes_the_rate(server: InProcServer) -> None:
    message = payload(12_500)
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=10.0, rtt_ms=0) as link:
        fast = time_to_arrive(link, server, message)
        link.set_link(bandwidth_mbps=1.0)
        slow = time_to_arrive(link, server, message)
        assert (link.bandwidth_mbps, link.rtt_ms) == (1.0, 0)
        link.set_link(bandwidth_mbps=None, rtt_ms=100)
        unlimited = time_to_arrive(link, server, message)
    assert serialisation_s(message, 10.0) <= fast < serialisation_s(message, 10.0) + SLACK_S
    assert serialisation_s(message, 1.0) <= slow < serialisation_s(message, 1.0) + SLACK_S
    assert 0.05 <= unlimited < 0.05 + SLACK_S


def test_order_is_preserved_across_sizes_and_link_changes(server: InProcServer) -> None:
    sizes = [40_000, 10, 8_000, 10, 20_000, 10, 10, 4_000]
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=20.0, rtt_ms=80) as link:
        for i, size in enumerate(sizes):
            link.send(payload(size, meta={"i": i}))
            if i == 3:
                link.set_link(rtt_ms=0)  # later messages may not overtake earlier ones
        order = [server.recv(timeout=5).meta["i"] for _ in sizes]
    assert order == list(range(len(sizes)))


def test_unlimited_link_passes_messages_through(server: InProcServer) -> None:
    with EmulatedLink.from_config(server.connect("edge"), LinkConfig()) as link:
        assert (link.bandwidth_mbps, link.downlink_mbps, link.rtt_ms) == (None, None, 0)
        elapsed = time_to_arrive(link, server, payload(100_000))
    assert elapsed < SLACK_S


def test_from_config_reads_every_setting(server: InProcServer) -> None:
    config = LinkConfig(bandwidth_mbps=8, downlink_mbps=50, rtt_ms=30)
    with EmulatedLink.from_config(server.connect("edge"), config) as link:
        assert (link.bandwidth_mbps, link.downlink_mbps, link.rtt_ms) == (8, 50, 30)


def test_protocol_error_from_the_wrapped_channel_is_raised_by_recv() -> None:
    hub = InProcServer()
    with EmulatedLink(hub, bandwidth_mbps=None, rtt_ms=40) as link:
        hub._deliver("cam-09", [b"\xc1 not msgpack"])
        hub._deliver("cam-01", [b"\x81"])  # truncated msgpack map: bad too
        with pytest.raises(MalformedHeader, match="header") as first:
            link.recv(timeout=5)
        assert first.value.sender == "cam-09"
        with pytest.raises(MalformedHeader, match="header"):
            link.recv(timeout=5)
        edge = hub.connect("cam-01")
        edge.send(Envelope(Kind.HELLO, device_id="cam-01"))
        hello = link.recv(timeout=5)
        assert (hello.kind, hello.sender) == (Kind.HELLO, "cam-01")


def test_failed_delivery_is_raised_by_the_next_send() -> None:
    hub = InProcServer()
    with EmulatedLink(hub, bandwidth_mbps=None, rtt_ms=0) as link:
        link.send(payload(10), to="nobody")
        link.flush(timeout=5)
        with pytest.raises(
            ConnectError, match="an earlier message could not be delivered: no connected client 'nobody'"
        ):
            link.send(payload(10), to="nobody")
        edge = hub.connect("edge")
        link.send(payload(10, meta={"ok": True}), to="edge")
        assert edge.recv(timeout=5).meta == {"ok": True}


def test_recv_times_out(server: InProcServer) -> None:
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=None, rtt_ms=0) as link:
        start = time.monotonic()
        with pytest.raises(ChannelTimeout, match=r"nothing received in 0\.1 s"):
            link.recv(timeout=0.1)
        assert time.monotonic() - start >= 0.1


def test_close_closes_the_wrapped_channel_and_is_idempotent(server: InProcServer) -> None:
    inner = server.connect("edge")
    link = EmulatedLink(inner, bandwidth_mbps=1.0, rtt_ms=500)
    link.send(payload(10))  # still on the emulated wire: dropped
    link.close()
    link.close()
    for channel in (link, inner):
        with pytest.raises(ChannelClosed):
            channel.send(payload(10))
        with pytest.raises(ChannelClosed):
            channel.recv(timeout=0.1)
    with pytest.raises(ChannelTimeout):
        server.recv(timeout=0.1)


def test_flush_times_out_while_the_link_is_busy(server: InProcServer) -> None:
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=1.0, rtt_ms=0) as link:
        link.send(payload(50_000))  # 0.4 s
        with pytest.raises(ChannelTimeout, match=r"uplink still busy after 0\.05 s"):
            link.flush(timeout=0.05)
        link.flush(timeout=5)
        assert server.recv(timeout=0).kind == Kind.ACTIVATION


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"bandwidth_mbps": 0.0, "rtt_ms": 0}, "bandwidth_mbps: expected a positive rate"),
        ({"bandwidth_mbps": None, "rtt_ms": -1}, "rtt_ms: expected a non-negative number"),
        ({"bandwidth_mbps": None, "rtt_ms": 0, "downlink_mbps": -5}, "downlink_mbps: expected a positive rate"),
    ],
)
def test_bad_settings_are_refused(server: InProcServer, settings: dict[str, float | None], message: str) -> None:
    inner = server.connect("edge")
    with pytest.raises(ValueError, match=message):
        EmulatedLink(inner, **settings)  # type: ignore[arg-type]
    with EmulatedLink(inner, bandwidth_mbps=None, rtt_ms=0) as link, pytest.raises(ValueError, match=message):
        link.set_link(**settings)  # type: ignore[arg-type]
