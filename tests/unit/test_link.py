"""The link emulator around in-process channels: serialisation time, RTT, queueing, rate changes, order, errors.

These are behaviour tests, not speed targets, and none depends on this host's speed:
a delay must never come early (checked against the clock), and the time each message
is due is checked in the schedule the link computed for it (recorded around its own
delivery steps), not against a slack for how late this host's threads ran.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from tandem.transport.config import LinkConfig
from tandem.transport.envelope import Envelope, Kind
from tandem.transport.errors import ChannelClosed, ChannelTimeout, ConnectError, MalformedHeader
from tandem.transport.inproc import InProcServer
from tandem.transport.link import EmulatedLink, _Incoming, _Outgoing, encoded_size

EXACT = 1e-9  # the schedule is arithmetic on the link's own timestamps: no host-speed slack


@dataclass(frozen=True)
class Sent:
    enqueued_at: float  # when send() queued it, by the link's clock
    deliver_at: float  # when the link scheduled it to reach the wrapped channel
    delivered_at: float  # when the link handed it over


@dataclass(frozen=True)
class Arrived:
    taken_from: float  # the link took it in from the wrapped channel at a time between this
    taken_by: float  # ... and this
    ready_at: float  # when the link scheduled it to become receivable


@dataclass
class Timeline:
    """What an :class:`EmulatedLink` scheduled for each message, read from its own bookkeeping."""

    sends: list[tuple[float, float]] = field(default_factory=list)  # each send() call: (called, returned)
    sent: list[Sent] = field(default_factory=list)
    arrived: list[Arrived] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def arrivals(self, count: int) -> list[Arrived]:
        """The first ``count`` arrivals, once recorded (recv may return just before the record is written)."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.arrived) >= count, timeout=5):
                raise AssertionError(f"{count} arrivals expected, {len(self.arrived)} recorded")
            return self.arrived[:count]


def watch(link: EmulatedLink) -> Timeline:
    """Record the schedule ``link`` computes, around the steps where it delivers and takes in a message."""
    timeline = Timeline()
    send, deliver, arrive = link.send, link._deliver, link._arrive

    def recording_send(envelope: Envelope, *, to: str | None = None) -> None:
        called = time.monotonic()
        send(envelope, to=to)
        timeline.sends.append((called, time.monotonic()))

    def recording_deliver(item: _Outgoing) -> None:
        timeline.sent.append(Sent(item.enqueued_at, item.deliver_at, time.monotonic()))
        deliver(item)

    def recording_arrive(item: _Incoming, nbytes: int) -> None:
        taken_from = time.monotonic()
        arrive(item, nbytes)
        with timeline.changed:
            timeline.arrived.append(Arrived(taken_from, time.monotonic(), item.ready_at))
            timeline.changed.notify_all()

    link.send = recording_send  # type: ignore[method-assign]
    link._deliver = recording_deliver  # type: ignore[method-assign]
    link._arrive = recording_arrive  # type: ignore[method-assign]
    return timeline


def assert_uplink_schedule(timeline: Timeline, index: int, delay_s: float, *, behind_s: float | None = None) -> None:
    """Message ``index`` was queued during its send() call and due ``delay_s`` after it went on the wire: when
    queued, or ``behind_s`` after the one before it went on the wire, if that was later."""
    sent, (called, returned) = timeline.sent[index], timeline.sends[index]
    assert called <= sent.enqueued_at <= returned, (called, sent, returned)
    start = sent.enqueued_at
    if behind_s is not None:
        start = max(start, timeline.sent[index - 1].enqueued_at + behind_s)
    assert sent.deliver_at == pytest.approx(start + delay_s, abs=EXACT), sent
    assert sent.delivered_at >= sent.deliver_at, sent  # never early


def assert_downlink_schedule(arrived: Arrived, delay_s: float) -> None:
    """``arrived`` was made receivable ``delay_s`` after the link took it in."""
    assert arrived.taken_from + delay_s <= arrived.ready_at + EXACT, arrived
    assert arrived.ready_at <= arrived.taken_by + delay_s + EXACT, arrived


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
        timeline = watch(link)
        elapsed = time_to_arrive(link, server, message)
    assert expected <= elapsed
    assert len(timeline.sent) == 1
    assert_uplink_schedule(timeline, 0, expected)


def test_send_does_not_block(server: InProcServer) -> None:
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=1.0, rtt_ms=60_000) as link:
        link.send(payload(50_000))  # 0.4 s on the wire, then 30 s on the way
        # send returned while the message is still on the emulated wire: nothing has reached the server
        with pytest.raises(ChannelTimeout):
            server.recv(timeout=0)
        with pytest.raises(ChannelTimeout, match="uplink still busy"):
            link.flush(timeout=0)


def test_rtt_adds_half_each_way(server: InProcServer) -> None:
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=None, rtt_ms=200) as link:
        timeline = watch(link)
        start = time.monotonic()
        link.send(payload(10))
        request = server.recv(timeout=5)
        uplink = time.monotonic() - start
        server.send(request.reply(Kind.RESULT), to=request.sender)
        reply = link.recv(timeout=5)
        round_trip = time.monotonic() - start
    assert reply.request_id == request.request_id
    assert reply.sender == "server"
    assert uplink >= 0.1
    assert round_trip >= 0.2
    assert len(timeline.sent) == 1
    assert_uplink_schedule(timeline, 0, 0.1)
    (arrived,) = timeline.arrivals(1)
    assert_downlink_schedule(arrived, 0.1)


def test_downlink_rate_delays_what_the_edge_receives(server: InProcServer) -> None:
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=None, rtt_ms=0, downlink_mbps=4.0) as link:
        timeline = watch(link)
        reply = payload(50_000)
        start = time.monotonic()
        server.send(reply, to="edge")
        link.recv(timeout=5)
        elapsed = time.monotonic() - start
    expected = serialisation_s(reply, 4.0)
    assert expected <= elapsed
    (arrived,) = timeline.arrivals(1)
    assert_downlink_schedule(arrived, expected)


def test_back_to_back_messages_queue_behind_each_other(server: InProcServer) -> None:
    first, second = payload(25_000, meta={"n": 1}), payload(25_000, meta={"n": 2})
    each = serialisation_s(first, 4.0)  # about 0.05 s
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=4.0, rtt_ms=20) as link:
        timeline = watch(link)
        start = time.monotonic()
        link.send(first)
        link.send(second)
        assert server.recv(timeout=5).meta == {"n": 1}
        after_first = time.monotonic() - start
        assert server.recv(timeout=5).meta == {"n": 2}
        after_second = time.monotonic() - start
    assert each + 0.01 <= after_first
    assert 2 * each + 0.01 <= after_second
    assert len(timeline.sent) == 2
    assert_uplink_schedule(timeline, 0, each + 0.01)
    # the second goes on the wire once the first has left it (or when sent, if this host was that slow to send it)
    assert_uplink_schedule(timeline, 1, each + 0.01, behind_s=each)


def test_set_link_changes_the_rate(server: InProcServer) -> None:
    message = payload(12_500)
    with EmulatedLink(server.connect("edge"), bandwidth_mbps=10.0, rtt_ms=0) as link:
        timeline = watch(link)
        fast = time_to_arrive(link, server, message)
        link.set_link(bandwidth_mbps=1.0)
        slow = time_to_arrive(link, server, message)
        assert (link.bandwidth_mbps, link.rtt_ms) == (1.0, 0)
        link.set_link(bandwidth_mbps=None, rtt_ms=100)
        unlimited = time_to_arrive(link, server, message)
    assert serialisation_s(message, 10.0) <= fast
    assert serialisation_s(message, 1.0) <= slow
    assert unlimited >= 0.05
    assert len(timeline.sent) == 3
    for index, delay in enumerate([serialisation_s(message, 10.0), serialisation_s(message, 1.0), 0.05]):
        assert_uplink_schedule(timeline, index, delay)  # each was sent once the one before had arrived: an idle link


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
        timeline = watch(link)
        time_to_arrive(link, server, payload(100_000))
    assert len(timeline.sent) == 1
    assert_uplink_schedule(timeline, 0, 0.0)  # due the moment it was sent


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
    link = EmulatedLink(inner, bandwidth_mbps=1.0, rtt_ms=600_000)
    link.send(payload(10))  # still on the emulated wire (300 s on the way): dropped
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
    inner, handed_over = server.connect("edge"), threading.Event()
    send = inner.send

    def held_send(envelope: Envelope, *, to: str | None = None) -> None:
        handed_over.wait(10)  # the wrapped channel takes it only when the test says: busy on any host
        send(envelope, to=to)

    inner.send = held_send  # type: ignore[method-assign]
    with EmulatedLink(inner, bandwidth_mbps=1.0, rtt_ms=0) as link:
        link.send(payload(50_000))  # 0.4 s, then held at the wrapped channel
        with pytest.raises(ChannelTimeout, match=r"uplink still busy after 0\.05 s"):
            link.flush(timeout=0.05)
        handed_over.set()
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
