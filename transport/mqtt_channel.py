"""MQTT 5 channels through a broker: :class:`MqttServer` (hub) and :class:`MqttClient` (edge).

Both implement :class:`tandem.transport.channel.Channel` on paho-mqtt 2.x (MQTT v5,
paho's ``loop_start`` network thread). That thread queues each message for
``recv``; after ``deliver_to(handler)`` it validates the message and calls
the handler itself instead, one thread hand-off fewer (the hub and the edge
agent receive this way, through :func:`tandem.transport.serve.receive_forever`).

Topic layout
------------
``{prefix}`` is ``MqttConfig.topic_prefix`` (default ``tandem/v1``), ``{kind}``
is the envelope's :class:`~tandem.transport.envelope.Kind` value (``activation``,
``result``, ``error``, ``hello``, ``heartbeat``, ``telemetry``, ``record``,
``sample``, ``ack``, ``plan``, ``artifact``)::

    {prefix}/{device_id}/up/{kind}     edge -> hub
    {prefix}/{device_id}/down/{kind}   hub -> edge

The prefix must not be empty, start or end with ``/``, or hold ``+``/``#``.
A device id must not be empty or hold ``/``, ``+``, ``#``. The hub subscribes
to ``{prefix}/+/up/+``; an edge to ``{prefix}/{device_id}/down/+``. The hub
answers a device with ``send(reply, to=device_id)``, which publishes on that
device's ``down`` topic; a hub ``send`` without ``to`` is a ``ValueError``.

Fleet groups: an edge made with ``groups=[...]`` also subscribes to
``{prefix}/group/{group}/down/+`` for each of them, and the hub's
``send_to_group(envelope, group)`` publishes there (the header ``device`` is
left empty: the message is for every member). Edges only hear the groups they
were made with; ``group`` is therefore not a usable device id.

Who sent it
-----------
On the hub, a received envelope's ``sender`` is the device id taken from the
topic, never from the payload. The header's ``device`` must equal it (a
message on a topic the device does not own) and the header's ``kind`` must
equal the topic's kind; otherwise ``recv`` raises
:class:`~tandem.transport.errors.MalformedHeader` with ``field`` ``"device"`` or
``"kind"`` and ``sender`` set to the topic's device. On an edge, ``sender``
is ``"server"``; the kind must match the topic and a non-empty header
``device`` must be the edge's own id. ``send`` fills in an empty
``device_id`` (the edge's own id, or the hub's ``to``) and refuses one that
names another device.

QoS per kind
------------
Each message is published at ``MqttConfig.qos_for(kind)``; by default
(``tandem.transport.config.DEFAULT_QOS``) ``activation``, ``result`` and
``heartbeat`` use QoS 0 and every other kind QoS 1. Both sides subscribe at
QoS 2, so a message reaches its receiver at the QoS its publisher chose.
A QoS 0 ``send`` while the connection is down raises
:class:`~tandem.transport.errors.ConnectError`. A QoS 1/2 ``send`` while it is down
is queued by paho (at most ``max_queued_messages``) and published once paho
has reconnected.

Payloads and chunks
-------------------
A payload is :func:`tandem.transport.envelope.pack` output, starting with ``b"TDM1"``,
when it fits in the effective limit: ``max_payload_bytes``, lowered to the
broker's Maximum Packet Size (from CONNACK, if the broker sends one) minus the
PUBLISH header and topic. Mosquitto advertises ``max_packet_size`` in CONNACK
but not the older ``message_size_limit``: keep ``max_payload_bytes`` at or below
that one. A larger message is split into chunks, each one PUBLISH on the same
topic at the same QoS, in order::

    offset  size  field (little-endian)
    0       4     magic       b"TDC1"
    4       16    message id  random, shared by the chunks of one message
    20      4     index       u32, 0 .. count-1
    24      4     count       u32
    28      8     total       u64, bytes of the whole packed message
    36      ...   data        chunks 0 .. count-2 carry equal slices, the last the rest

The receiver reassembles per (device, message id) in any order, ignores
repeated chunks (QoS 1 redelivery), rejects a ``total`` over
``Limits.max_message_bytes`` before buffering (``MessageTooLarge``, field
``chunk.total``) and chunks that disagree on ``count``/``total``
(``ChunkError``, field ``chunk.count``/``chunk.total``); it keeps at most 4
partial messages per device and drops a partial message that gets no chunk
for ``chunk_timeout_s`` (30 s). At QoS 0, one lost chunk loses the message.
See :mod:`tandem.transport.chunking`.

Sessions and reconnects
-----------------------
With ``session_expiry_s > 0`` the client connects with ``clean_start=False``
and that Session Expiry Interval: while it is away the broker keeps its
subscriptions and queues QoS 1/2 messages for it, and delivers them when it
returns within the interval with the same client id. A generated client id
(``tandem-hub-<hex>``, ``tandem-edge-<device>-<hex>``) lasts as long as the
channel object, so it covers reconnects; set ``client_id`` to resume a session
after a restart. paho reconnects with exponential backoff
(``reconnect_min_s`` doubling up to ``reconnect_max_s``) and the channel
subscribes again in ``on_connect``.

Shared subscriptions
--------------------
With ``shared_group`` set, the hub subscribes to
``$share/{group}/{prefix}/+/up/+``: several hub replicas share the load and the
broker hands each message to exactly one member of the group. Replies are
unaffected (they go to the device's ``down`` topic). Chunks of one message may
be handed to different replicas, which could then never complete it: give the
hubs of a shared group a ``max_payload_bytes`` large enough that their edges'
messages are not chunked, or have edges send within that size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import secrets
import socket
import threading
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from tandem.throttled_log import clip
from tandem.transport.channel import Channel, PushHandler
from tandem.transport.chunking import CHUNK_MAGIC, Reassembler, split
from tandem.transport.config import MqttConfig, TlsConfig, check_topic_name, check_topic_prefix
from tandem.transport.envelope import Buffer, Envelope, Kind, Limits, pack, unpack
from tandem.transport.errors import (
    ChannelClosed,
    ChannelError,
    ChannelTimeout,
    ConnectError,
    MalformedHeader,
    ProtocolError,
)

__all__ = ["SERVER_SENDER", "MqttClient", "MqttServer"]

SERVER_SENDER = "server"
_PUBLISH_OVERHEAD = 16  # fixed header, topic length, packet id, properties length
_CLOSED = object()

log = logging.getLogger("tandem.transport.mqtt")
_paho_log = logging.getLogger("tandem.transport.mqtt.paho")


class _QuietNotConnected(logging.Filter):
    """paho 2.2 logs an ERROR on every loop pass without a socket, which includes each normal disconnect."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log.addFilter(_QuietNotConnected())


class _MqttChannel(Channel):
    """What hub and edge share: the paho client, connect, publish and the inbox."""

    _role = "channel"
    _subscription = ""
    _extra_subscriptions: tuple[str, ...] = ()

    def __init__(
        self,
        config: MqttConfig,
        *,
        client_id: str,
        limits: Limits,
        reconnect_min_s: float,
        reconnect_max_s: float,
        max_queued_messages: int,
        chunk_timeout_s: float,
        wait_for_broker: bool = True,
    ) -> None:
        self._config = config
        self._prefix = config.topic_prefix
        self._where = f"{config.host}:{config.port}"
        self._limits = limits
        self.client_id = client_id
        self._qos = {kind: config.qos_for(kind) for kind in Kind}
        self._max_payload = config.max_payload_bytes
        self._broker_max_packet: int | None = None
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handler: PushHandler | None = None
        self._push_lock = threading.Lock()  # held while a handler is set, changed or called
        self._reassembler = Reassembler(limits, timeout_s=chunk_timeout_s)
        self._connack = threading.Event()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._subscribe_refused: str | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._read_at = 0.0  # when paho last read a message or an acknowledgement
        self._reads_in_a_row = 0  # reads in a row, each within _STREAMING_GAP_S of the one before
        self._client = self._make_client(reconnect_min_s, reconnect_max_s, max_queued_messages)
        self._connect(wait_for_broker)

    # -- public -------------------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The broker and what this end hears there, e.g. ``mqtt://127.0.0.1:1883 topics tandem/v1/+/up/+``."""
        scheme = "mqtts" if self._config.tls else "mqtt"
        topics = ", ".join((self._subscription, *self._extra_subscriptions))
        return f"{scheme}://{self._where} topics {topics}"

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up right now."""
        return self._client.is_connected()

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload published unchunked (on a topic of 64 characters)."""
        return self._payload_limit(64)

    @property
    def chunks_dropped(self) -> int:
        """Partial chunked messages abandoned (timeout or too many in flight)."""
        return self._reassembler.dropped

    def recv(self, timeout: float | None = None) -> Envelope:
        """The next envelope; ``ChannelTimeout`` after ``timeout`` s; ``ProtocolError`` (``sender`` set) if bad."""
        self._check_open()
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise ChannelTimeout(f"nothing received from the MQTT broker at {self._where} in {timeout} s") from None
        if item is _CLOSED:
            self._inbox.put(_CLOSED)  # wake any other waiting reader too
            raise ChannelClosed(f"{type(self).__name__} is closed")
        if isinstance(item, ProtocolError):
            raise item
        return self._envelope_from(*item)

    def deliver_to(self, handler: PushHandler | None) -> bool:
        """Have paho's network thread hand each message to ``handler`` (see :meth:`Channel.deliver_to`)."""
        with self._push_lock:
            self._handler = handler
            if handler is None:
                return True
            while True:  # what arrived before, in order; paho's thread waits for the lock meanwhile
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    return True
                if item is _CLOSED:
                    handler(ChannelClosed(f"{type(self).__name__} is closed"))
                    return True
                self._push(handler, item)

    def close(self) -> None:
        """Disconnect from the broker and stop paho's network thread; idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._shutdown()
        with self._push_lock:
            if self._handler is not None:
                self._handler(ChannelClosed(f"{type(self).__name__} is closed"))
            else:
                self._inbox.put(_CLOSED)
        log.info("MQTT %s %s disconnected from %s", self._role, self.client_id, self._where)

    def _envelope_from(self, device: str, kind: str, payload: Buffer) -> Envelope:
        try:
            envelope = unpack(payload, self._limits)
            self._check_routing(envelope, device, kind)
        except ProtocolError as exc:
            exc.sender = self._sender_name(device)
            raise
        envelope.sender = self._sender_name(device)
        return envelope

    def _push(self, handler: PushHandler, item: tuple[str, str, Buffer] | ProtocolError) -> None:
        if isinstance(item, ProtocolError):
            handler(item)
            return
        try:
            envelope = self._envelope_from(*item)
        except ProtocolError as exc:
            handler(exc)
            return
        handler(envelope)

    # -- sending ------------------------------------------------------------------------------------------------

    def _publish_envelope(self, envelope: Envelope, topic: str) -> None:
        qos = self._qos[envelope.kind]
        if qos == 0 and not self._client.is_connected():
            raise ConnectError(
                f"not connected to the MQTT broker at {self._where}: QoS 0 {envelope.kind.value} message for "
                f"{topic} not sent (paho is reconnecting)"
            )
        payload = pack(envelope)
        limit = self._payload_limit(len(topic))
        if len(payload) <= limit:
            self._publish(topic, payload, qos)
            return
        for chunk in split(payload, limit):
            self._publish(topic, chunk, qos)

    def _publish(self, topic: str, payload: bytes, qos: int) -> None:
        try:
            info = self._client.publish(topic, payload, qos)
        except (ValueError, TypeError, OSError) as exc:
            raise ChannelError(f"publishing {len(payload)} bytes to {topic} on {self._where} failed: {exc}") from exc
        rc = info.rc
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0):
            return  # QoS > 0 while disconnected: paho keeps it and publishes it after reconnecting
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise ConnectError(f"not connected to the MQTT broker at {self._where}: message for {topic} not sent")
        raise ChannelError(f"publishing to {topic} on {self._where} failed: {paho.error_string(rc)}")

    def _payload_limit(self, topic_len: int) -> int:
        broker_max = self._broker_max_packet
        if broker_max is None:
            return self._max_payload
        return min(self._max_payload, broker_max - _PUBLISH_OVERHEAD - topic_len)

    def _own_device(self, envelope: Envelope, device: str) -> Envelope:
        if envelope.device_id == device:
            return envelope
        if envelope.device_id:
            raise ValueError(
                f"envelope device_id {envelope.device_id!r} does not match the topic's device {device!r}; "
                "a device may only publish on (and be sent on) its own topics"
            )
        return dataclasses.replace(envelope, device_id=device)

    # -- receiving (paho's network thread) ----------------------------------------------------------------------

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        self._acknowledge(client, len(message.payload))
        device = "?"
        try:
            device, kind = self._parse_topic(message.topic)
            payload: Buffer = message.payload
            if payload[:4] == CHUNK_MAGIC:
                self._on_chunk()
                whole = self._reassembler.feed(device, payload)
                if whole is None:
                    return
                payload = whole
            self._take((device, kind, payload))
        except ProtocolError as exc:
            exc.sender = self._sender_name(device)
            self._take(exc)
        except Exception:  # an exception here would end paho's network thread
            log.exception("MQTT %s %s: dropped a message on %r", self._role, self.client_id, message.topic)

    def _on_publish(
        self, client: paho.Client, userdata: object, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        # QoS > 0: a PUBACK/PUBCOMP was read, and the broker may hold an answer behind it until we ACK.
        # (paho also calls this when a QoS 0 PUBLISH has been written; an ACK then does no harm.)
        self._acknowledge(client, 0)

    def _acknowledge(self, client: paho.Client, nbytes: int) -> None:
        """ACK at once (see :func:`_ack_now`) what paho just read, unless the kernel or the traffic will.

        A read of ``_KERNEL_ACKS_BYTES`` or more is acknowledged by the kernel at
        once anyway. After ``_STREAMING_READS`` reads in a row, each within
        ``_STREAMING_GAP_S`` of the one before, the traffic is a stream, whose
        own segments carry ACKs: an ACK per message there cost 6 % (QoS 0) to
        19 % (QoS 1) of the throughput on loopback.
        """
        now = time.monotonic()
        self._reads_in_a_row = self._reads_in_a_row + 1 if now - self._read_at < _STREAMING_GAP_S else 0
        self._read_at = now
        if nbytes < _KERNEL_ACKS_BYTES and self._reads_in_a_row < _STREAMING_READS:
            _ack_now(client.socket())

    def _take(self, item: tuple[str, str, Buffer] | ProtocolError) -> None:
        with self._push_lock:  # under the lock: deliver_to may be handing over the queued messages
            if self._handler is None:
                self._inbox.put(item)
            else:
                self._push(self._handler, item)

    @abstractmethod
    def _parse_topic(self, topic: str) -> tuple[str, str]:
        """(device, kind) from a topic of this channel's subscription."""

    def _on_chunk(self) -> None:
        """Called for each chunk received, before reassembly."""

    def _check_routing(self, envelope: Envelope, device: str, kind: str) -> None:
        if envelope.kind.value != kind:
            raise MalformedHeader(
                f"kind: header says {envelope.kind.value!r} but the message came on a {clip(kind)} topic",
                field="kind",
                request_id=envelope.request_id,
                device_id=envelope.device_id or None,
            ).keeping_ids(envelope)

    def _sender_name(self, device: str) -> str:
        return device

    # -- connection ---------------------------------------------------------------------------------------------

    def _make_client(self, reconnect_min_s: float, reconnect_max_s: float, max_queued: int) -> paho.Client:
        config = self._config
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=MQTTProtocolVersion.MQTTv5)
        client.enable_logger(_paho_log)
        client.connect_timeout = config.connect_timeout_s
        client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]  # floats work
        client.max_queued_messages_set(max_queued)
        if config.username is not None:
            password = config.password.get_secret_value() if config.password is not None else None
            client.username_pw_set(config.username, password)
        if config.tls is not None:
            self._set_tls(client, config.tls)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _set_tls(self, client: paho.Client, tls: TlsConfig) -> None:
        for setting, path in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file)):
            if path is not None and not path.is_file():  # ssl's own error names no file
                raise ConnectError(f"tls.{setting}: {path} not found (TLS towards the MQTT broker at {self._where})")
        try:
            client.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
            client.tls_insecure_set(tls.insecure)
        except (OSError, ValueError) as exc:
            raise ConnectError(f"TLS setup for the MQTT broker at {self._where} failed: {exc}") from exc

    def _connect(self, wait: bool) -> None:
        """Connect and subscribe; without ``wait``, paho does both in the background, retrying with backoff."""
        config = self._config
        properties = Properties(PacketTypes.CONNECT)
        if config.session_expiry_s > 0:
            properties.SessionExpiryInterval = config.session_expiry_s
        scheme = "mqtts" if config.tls else "mqtt"
        log.info(
            "MQTT %s %s connecting to %s://%s (session expiry %d s)%s",
            self._role,
            self.client_id,
            scheme,
            self._where,
            config.session_expiry_s,
            "" if wait else "; in the background, retrying until the broker answers",
        )
        connect = self._client.connect if wait else self._client.connect_async
        try:
            connect(
                config.host,
                config.port,
                keepalive=config.keepalive_s,
                clean_start=config.session_expiry_s == 0,
                properties=properties,
            )
        except (OSError, ValueError) as exc:
            _close_sockets_in(exc)
            self._shutdown()
            raise ConnectError(f"cannot connect to the MQTT broker at {self._where}: {_describe(exc)}") from exc
        self._client.loop_start()
        if not wait:
            return
        timeout = config.connect_timeout_s
        if not self._connack.wait(timeout):
            self._shutdown()
            raise ConnectError(f"no CONNACK from the MQTT broker at {self._where} within {timeout} s")
        if self._refused is not None:
            self._shutdown()
            raise ConnectError(f"the MQTT broker at {self._where} refused the connection: {self._refused}")
        if not self._subscribed.wait(timeout):
            self._shutdown()
            raise ConnectError(f"no SUBACK for {self._subscription} from the MQTT broker at {self._where}")
        if self._subscribe_refused is not None:
            self._shutdown()
            raise ConnectError(
                f"the MQTT broker at {self._where} refused the subscription {self._subscription}: "
                f"{self._subscribe_refused}"
            )

    def _shutdown(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._client._reset_sockets()  # close paho's socket pair now rather than at garbage collection

    def _on_connect(
        self, client: paho.Client, userdata: object, flags: Any, reason: ReasonCode, properties: Properties | None
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            log.error("MQTT %s %s: broker at %s refused the connection: %s", self._role, self.client_id,
                      self._where, reason)  # fmt: skip
            self._connack.set()
            return
        self._refused = None  # a broker that refused an earlier attempt accepted this one
        self._broker_max_packet = getattr(properties, "MaximumPacketSize", None)
        _no_delay(client.socket())
        again = "re" if self._connack.is_set() else ""
        log.info(
            "MQTT %s %s %sconnected to %s (session present: %s, broker max packet: %s); subscribing to %s",
            self._role, self.client_id, again, self._where, flags.session_present,
            self._broker_max_packet or "unlimited", self._subscription,
        )  # fmt: skip
        if self._extra_subscriptions:
            topics = [(topic, SubscribeOptions(qos=2)) for topic in (self._subscription, *self._extra_subscriptions)]
            rc, _ = client.subscribe(topics)
        else:
            rc, _ = client.subscribe(self._subscription, options=SubscribeOptions(qos=2))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("MQTT %s %s: subscribing to %s failed: %s", self._role, self.client_id, self._subscription,
                      paho.error_string(rc))  # fmt: skip
        self._connack.set()

    def _on_subscribe(
        self, client: paho.Client, userdata: object, mid: int, reasons: list[ReasonCode], properties: Properties | None
    ) -> None:
        self._acknowledge(client, 0)  # the broker may hold the first message for us behind this SUBACK
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._subscribe_refused = ", ".join(failed)
            log.error("MQTT %s %s: broker refused subscription %s: %s", self._role, self.client_id,
                      self._subscription, self._subscribe_refused)  # fmt: skip
        self._subscribed.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: object, flags: Any, reason: ReasonCode, properties: Properties | None
    ) -> None:
        if not self._closed and self._refused is None:
            log.warning("MQTT %s %s lost the broker at %s (%s); paho reconnects with backoff",
                        self._role, self.client_id, self._where, reason)  # fmt: skip

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosed(f"{type(self).__name__} is closed")


class MqttServer(_MqttChannel):
    """The hub side: hears every device's ``up`` topics and answers on their ``down`` topics.

    Keyword arguments mirror :class:`~tandem.transport.config.MqttConfig`; besides them, ``limits`` bound what is
    accepted, ``reconnect_min_s``/``reconnect_max_s`` set paho's reconnect backoff, ``max_queued_messages``
    caps QoS > 0 messages paho holds while disconnected, and ``chunk_timeout_s`` ends partial chunked messages.
    Connects (and subscribes) before returning, ``ConnectError`` otherwise; with ``wait_for_broker=False``
    it returns at once and paho connects in the background, retrying with the reconnect backoff (sends
    fail with ``ConnectError`` until then, as while reconnecting).
    """

    _role = "hub"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        topic_prefix: str = "tandem/v1",
        shared_group: str | None = None,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        tls: TlsConfig | None = None,
        qos: Mapping[Kind, int] | None = None,
        max_payload_bytes: int = 256 << 10,
        session_expiry_s: int = 3600,
        connect_timeout_s: float = 10.0,
        limits: Limits = Limits(),
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        max_queued_messages: int = 10000,
        chunk_timeout_s: float = 30.0,
        wait_for_broker: bool = True,
    ) -> None:
        config = MqttConfig(
            host=host, port=port, topic_prefix=check_topic_prefix(topic_prefix), client_id=client_id, username=username,
            password=password, keepalive_s=keepalive_s, tls=tls, qos=_qos_overrides(qos),
            max_payload_bytes=max_payload_bytes, shared_group=shared_group, session_expiry_s=session_expiry_s,
            connect_timeout_s=connect_timeout_s,
        )  # fmt: skip
        subscription = f"{topic_prefix}/+/up/+"
        if shared_group is not None:
            subscription = f"$share/{check_topic_name('shared_group', shared_group)}/{subscription}"
        self._subscription = subscription
        self._shared_group = shared_group
        self._warned_shared_chunks = False
        self._up_start = len(topic_prefix) + 1
        super().__init__(
            config,
            client_id=client_id or f"tandem-hub-{secrets.token_hex(4)}",
            limits=limits,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            max_queued_messages=max_queued_messages,
            chunk_timeout_s=chunk_timeout_s,
            wait_for_broker=wait_for_broker,
        )

    @classmethod
    def from_config(
        cls, config: MqttConfig, *, device_id: str | None = None, limits: Limits = Limits(), **options: Any
    ) -> MqttServer:
        """A hub channel as ``config`` says (``device_id`` is not used by the hub)."""
        return cls(**_config_kwargs(config), shared_group=config.shared_group, limits=limits, **options)

    def send(self, envelope: Envelope, *, to: str | None = None) -> None:
        """Publish ``envelope`` on ``{prefix}/{to}/down/{kind}``; ``to`` is required."""
        self._check_open()
        if to is None:
            raise ValueError(
                f"MqttServer.send needs to=<device id>: the hub publishes on {self._prefix}/<device>/down/<kind>"
            )
        check_topic_name("device id", to)
        envelope = self._own_device(envelope, to)
        self._publish_envelope(envelope, f"{self._prefix}/{to}/down/{envelope.kind.value}")

    def send_to_group(self, envelope: Envelope, group: str) -> None:
        """Publish ``envelope`` on ``{prefix}/group/{group}/down/{kind}``, heard by every edge in ``group``."""
        self._check_open()
        check_topic_name("group", group)
        if envelope.device_id:
            raise ValueError(f"group message: device_id must be empty (it is for every member): {envelope.device_id!r}")
        self._publish_envelope(envelope, f"{self._prefix}/group/{group}/down/{envelope.kind.value}")

    def _parse_topic(self, topic: str) -> tuple[str, str]:
        parts = topic[self._up_start :].split("/")
        if len(parts) != 3 or parts[1] != "up":
            raise MalformedHeader(f"topic {clip(topic)} is not {self._prefix}/<device>/up/<kind>", field="topic")
        return parts[0], parts[2]

    def _on_chunk(self) -> None:
        if self._shared_group is not None and not self._warned_shared_chunks:
            self._warned_shared_chunks = True
            log.warning(
                "MQTT hub %s gets chunked messages through shared group %r: the broker may hand chunks of one "
                "message to different replicas, which then cannot complete it; raise max_payload_bytes on the edges",
                self.client_id, self._shared_group,
            )  # fmt: skip

    def _check_routing(self, envelope: Envelope, device: str, kind: str) -> None:
        if envelope.device_id != device:
            raise MalformedHeader(
                f"device: header says {clip(envelope.device_id)} but the message came on a topic of device {device!r}: "
                "a message on a topic the device does not own",
                field="device",
                request_id=envelope.request_id,
                device_id=envelope.device_id or None,
            ).keeping_ids(envelope)
        super()._check_routing(envelope, device, kind)


class MqttClient(_MqttChannel):
    """The edge side: publishes on its ``up`` topics and hears its ``down`` topics.

    Keyword arguments are those of :class:`MqttServer` (less ``shared_group``) plus the ``device_id`` that
    names this edge's topics.
    """

    _role = "edge"

    def __init__(
        self,
        *,
        device_id: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        topic_prefix: str = "tandem/v1",
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        tls: TlsConfig | None = None,
        qos: Mapping[Kind, int] | None = None,
        max_payload_bytes: int = 256 << 10,
        session_expiry_s: int = 3600,
        connect_timeout_s: float = 10.0,
        limits: Limits = Limits(),
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 30.0,
        max_queued_messages: int = 10000,
        chunk_timeout_s: float = 30.0,
        groups: Sequence[str] = (),
        wait_for_broker: bool = True,
    ) -> None:
        self.device_id = check_topic_name("device id", device_id)
        self.groups = tuple(check_topic_name("group", group) for group in groups)
        config = MqttConfig(
            host=host, port=port, topic_prefix=check_topic_prefix(topic_prefix), client_id=client_id, username=username,
            password=password, keepalive_s=keepalive_s, tls=tls, qos=_qos_overrides(qos),
            max_payload_bytes=max_payload_bytes, shared_group=None, session_expiry_s=session_expiry_s,
            connect_timeout_s=connect_timeout_s,
        )  # fmt: skip
        self._subscription = f"{topic_prefix}/{device_id}/down/+"
        self._down_start = len(self._subscription) - 1
        self._group_topics = {f"{topic_prefix}/group/{group}/down/": group for group in self.groups}
        self._extra_subscriptions = tuple(f"{topic}+" for topic in self._group_topics)
        self._up_topics = {kind: f"{topic_prefix}/{device_id}/up/{kind.value}" for kind in Kind}
        super().__init__(
            config,
            client_id=client_id or f"tandem-edge-{device_id}-{secrets.token_hex(4)}",
            limits=limits,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            max_queued_messages=max_queued_messages,
            chunk_timeout_s=chunk_timeout_s,
            wait_for_broker=wait_for_broker,
        )

    @classmethod
    def from_config(
        cls,
        config: MqttConfig,
        *,
        device_id: str | None = None,
        limits: Limits = Limits(),
        groups: Sequence[str] = (),
        **options: Any,
    ) -> MqttClient:
        """An edge channel for ``device_id`` (and its fleet ``groups``) as ``config`` says."""
        if not device_id:
            raise ValueError("MqttClient.from_config needs device_id: the edge publishes on <prefix>/<device>/up/...")
        return cls(device_id=device_id, **_config_kwargs(config), limits=limits, groups=groups, **options)

    def send(self, envelope: Envelope, *, to: str | None = None) -> None:
        """Publish ``envelope`` on ``{prefix}/{device_id}/up/{kind}`` (``to`` is ignored: the hub is the peer)."""
        self._check_open()
        envelope = self._own_device(envelope, self.device_id)
        self._publish_envelope(envelope, self._up_topics[envelope.kind])

    def _parse_topic(self, topic: str) -> tuple[str, str]:
        kind = topic[self._down_start :]
        if not topic.startswith(self._subscription[:-1]) or "/" in kind:
            base, _, kind = topic.rpartition("/")
            if f"{base}/" not in self._group_topics:
                raise MalformedHeader(f"topic {clip(topic)} is not {self._subscription[:-1]}<kind>", field="topic")
        return self.device_id, kind

    def _check_routing(self, envelope: Envelope, device: str, kind: str) -> None:
        if envelope.device_id and envelope.device_id != device:
            raise MalformedHeader(
                f"device: header says {clip(envelope.device_id)} "
                f"but the message came on the topics of device {device!r}",
                field="device",
                request_id=envelope.request_id,
                device_id=envelope.device_id,
            ).keeping_ids(envelope)
        super()._check_routing(envelope, device, kind)

    def _sender_name(self, device: str) -> str:
        return SERVER_SENDER


def _qos_overrides(qos: Mapping[Kind, int] | None) -> dict[Kind, Literal[0, 1, 2]]:
    return cast("dict[Kind, Literal[0, 1, 2]]", dict(qos or {}))  # MqttConfig validates the values


def read_password(path: Path) -> str:
    """The MQTT password in ``path`` (``password_file``), without its trailing newline."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConnectError(f"password_file: {path}: cannot read the MQTT password: {reason}") from exc
    password = text[:-1] if text.endswith("\n") else text
    password = password[:-1] if password.endswith("\r") else password
    if not password:
        raise ConnectError(f"password_file: {path} is empty")
    return password


def _config_kwargs(config: MqttConfig) -> dict[str, Any]:
    return {
        "host": config.host,
        "port": config.port,
        "topic_prefix": config.topic_prefix,
        "client_id": config.client_id,
        "username": config.username,
        "password": config.password.get_secret_value() if config.password is not None else (
            read_password(config.password_file) if config.password_file is not None else None
        ),
        "keepalive_s": config.keepalive_s,
        "tls": config.tls,
        "qos": config.qos,
        "max_payload_bytes": config.max_payload_bytes,
        "session_expiry_s": config.session_expiry_s,
        "connect_timeout_s": config.connect_timeout_s,
    }


def _no_delay(sock: object) -> None:
    """Turn Nagle's algorithm off on paho's socket.

    paho writes a PUBACK and the next PUBLISH as separate small segments; with
    Nagle on, the second waits for the peer's delayed ACK (40 ms on Linux) on
    every request/answer hop.
    """
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_KERNEL_ACKS_BYTES = 64 << 10  # more than a full segment since the last ACK: Linux ACKs at once
_STREAMING_GAP_S = 0.002
_STREAMING_READS = 4


def _ack_now(sock: object) -> None:
    """Acknowledge what paho just read now, not after the delayed-ACK timer (up to 40 ms on Linux).

    A broker with Nagle on (Mosquitto's default, ``set_tcp_nodelay false``)
    holds a message for us until we acknowledge the one before it, so two
    answers sent back to back, such as the first ones on a new connection,
    arrived ~40 ms apart. ``TCP_QUICKACK`` is not sticky: it is set again for
    every message.
    """
    if _QUICKACK is not None and isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, OSError) and not str(exc).startswith("[") else text


def _close_sockets_in(exc: BaseException) -> None:
    """Close sockets a failed connect left behind (paho does not close a socket whose TLS handshake failed)."""
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()
        tb = tb.tb_next
