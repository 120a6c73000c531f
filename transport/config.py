"""Config sections for channels, message limits and the link emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from tandem.config import StrictModel
from tandem.contracts.sync_topics import SYNC_TOPIC_PREFIX
from tandem.transport.envelope import Kind, Limits

__all__ = [
    "DEFAULT_QOS",
    "FORBIDDEN_IN_TOPIC_NAMES",
    "ChannelConfig",
    "CurveConfig",
    "InProcConfig",
    "LimitsConfig",
    "LinkConfig",
    "MqttConfig",
    "TlsConfig",
    "ZmqConfig",
    "check_topic_name",
    "check_topic_prefix",
    "sync_topics",
]

DEFAULT_QOS: dict[Kind, int] = {
    Kind.ACTIVATION: 0,
    Kind.RESULT: 0,
    Kind.ERROR: 1,
    Kind.HELLO: 1,
    Kind.HEARTBEAT: 0,
    Kind.TELEMETRY: 1,
    Kind.RECORD: 1,
    Kind.SAMPLE: 1,
    Kind.ACK: 1,
    Kind.PLAN: 1,
    Kind.ARTIFACT: 1,
}


# A device id, group or shared group is one MQTT topic level: no level separator,
# no wildcard, no NUL (MQTT 5, section 4.7).
FORBIDDEN_IN_TOPIC_NAMES = ("/", "+", "#", "\x00")


def check_topic_name(what: str, value: str) -> str:
    """``value`` when it can be one MQTT topic level; else ValueError naming ``what``."""
    if not value or any(ch in value for ch in FORBIDDEN_IN_TOPIC_NAMES):
        raise ValueError(f"{what} {value!r} cannot be used in an MQTT topic: it must be non-empty, without / + # NUL")
    return value


RESERVED_DEVICE_IDS = ("sync", "group")


def check_device_id(value: str) -> str:
    """``value`` when it can be a device id: one topic level, and not a word the topic scheme and ACLs reserve."""
    check_topic_name("device id", value)
    if value in RESERVED_DEVICE_IDS:
        raise ValueError(
            f"device id {value!r} is reserved: tandem/v1/{value}/... are sync and group topics "
            "(deploy/tandem.acl keys both on the login); choose another device_id"
        )
    return value


def check_topic_prefix(prefix: str) -> str:
    """``prefix`` when it is topic levels such as ``tandem/v1``; else ValueError."""
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or any(c in prefix for c in "+#\x00"):
        raise ValueError(f"topic_prefix {prefix!r}: expected levels such as 'tandem/v1', without + # or outer slashes")
    return prefix


class LimitsConfig(StrictModel):
    """What a receiver accepts before it allocates anything."""

    max_message_bytes: int = Field(64 << 20, gt=0)
    max_header_bytes: int = Field(1 << 20, gt=0)
    max_tensors: int = Field(256, gt=0)

    def to_limits(self) -> Limits:
        """The runtime form used by ``tandem.transport.envelope.decode``."""
        return Limits(self.max_message_bytes, self.max_header_bytes, self.max_tensors)


class CurveConfig(StrictModel):
    """ZeroMQ CURVE keys, as files made by ``tandem keys``.

    A server names its own secret key file and, optionally, a folder of the
    public keys of the clients it accepts. A client names its own secret key
    file and the server's public key file.
    """

    secret_key_file: Path
    server_public_key_file: Path | None = None
    authorized_clients_dir: Path | None = None


class ZmqConfig(StrictModel):
    """ZeroMQ DEALER (edge) / ROUTER (hub) over TCP."""

    type: Literal["zmq"] = "zmq"
    address: str = "tcp://127.0.0.1:5555"
    curve: CurveConfig | None = None
    send_hwm: int = Field(1000, gt=0)
    recv_hwm: int = Field(1000, gt=0)

    @field_validator("address")
    @classmethod
    def _tcp_or_ipc(cls, value: str) -> str:
        if not value.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError("expected a ZeroMQ endpoint such as 'tcp://127.0.0.1:5555'")
        return value


class TlsConfig(StrictModel):
    """TLS towards the MQTT broker."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(False, description="skip the broker hostname check (tests only)")


class MqttConfig(StrictModel):
    """MQTT 5 through a broker; docs/protocol.md gives the topic layout."""

    type: Literal["mqtt"] = "mqtt"
    host: str = "127.0.0.1"
    port: int = Field(1883, gt=0, lt=65536)
    topic_prefix: str = "tandem/v1"
    client_id: str | None = None
    username: str | None = None
    password: SecretStr | None = Field(None, description="shown as ********** by check-config")
    password_file: Path | None = Field(
        None, description="read the password from this file (a mounted Secret); one trailing newline is dropped"
    )
    keepalive_s: int = Field(30, gt=0)
    tls: TlsConfig | None = None
    qos: dict[Kind, Literal[0, 1, 2]] = Field(default_factory=dict)
    max_payload_bytes: int = Field(256 << 10, ge=1024)
    shared_group: str | None = Field(None, description="server side: consume through $share/<group>/...")
    session_expiry_s: int = Field(3600, ge=0)
    connect_timeout_s: float = Field(10.0, gt=0)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_topic_prefix(value)

    @field_validator("shared_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        return None if value is None else check_topic_name("shared_group", value)

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("password and password_file: set one of them, not both")
        return self

    def qos_for(self, kind: Kind) -> int:
        """The QoS for ``kind``: this config's override or the default."""
        return self.qos.get(kind, DEFAULT_QOS[kind])


class InProcConfig(StrictModel):
    """Both ends in one process (tests and single-box deployments)."""

    type: Literal["inproc"] = "inproc"


ChannelConfig = Annotated[ZmqConfig | MqttConfig | InProcConfig, Field(discriminator="type")]


class LinkConfig(StrictModel):
    """An emulated link wrapped around a channel: uplink/downlink rate and RTT."""

    bandwidth_mbps: float | None = Field(None, gt=0, description="uplink Mbit/s; none means unlimited")
    downlink_mbps: float | None = Field(None, gt=0, description="downlink Mbit/s; none means unlimited")
    rtt_ms: float = Field(0.0, ge=0)


def sync_topics(mqtt: MqttConfig) -> MqttConfig:
    """``mqtt`` with the sync topic prefix unless one was set: sync must not share the activation channel's topics.

    On the default prefix the hub's activation channel would hear the sync
    messages (and the sync channel the agent's heartbeats), since both subscribe
    to ``{prefix}/+/up/+``.
    """
    if "topic_prefix" in mqtt.model_fields_set:
        return mqtt
    return mqtt.model_copy(update={"topic_prefix": SYNC_TOPIC_PREFIX})


_LOOPBACK_HOSTS = ("localhost", "127.", "::1", "[::1]")


def _is_loopback(host: str) -> bool:
    return host.startswith(_LOOPBACK_HOSTS) or host == "localhost"


def exposure_warning(channel: ChannelConfig, *, listens: bool) -> str | None:
    """Why ``channel`` is open to the network without encryption or authentication, or None.

    ``listens``: the hub binds the address; an edge connects to it. A ZeroMQ
    address beyond loopback without ``curve``, or an MQTT broker beyond
    loopback without ``tls``, gets a sentence saying what is exposed and the
    key that closes it.
    """
    if isinstance(channel, ZmqConfig):
        if not channel.address.startswith("tcp://") or channel.curve is not None:
            return None
        host = channel.address[len("tcp://") :].rsplit(":", 1)[0]
        if _is_loopback(host):
            return None
        if listens:
            return (f"ZeroMQ channel {channel.address} listens beyond loopback without CURVE: anyone who reaches it "
                    "can send activations and read results; set curve (tandem keys makes the key pairs) or bind "
                    "127.0.0.1")  # fmt: skip
        return (f"ZeroMQ channel to {channel.address} without CURVE: activations and results cross the network "
                "unencrypted and unauthenticated; set curve (tandem keys makes the key pairs)")  # fmt: skip
    if isinstance(channel, MqttConfig) and channel.tls is None and not _is_loopback(channel.host):
        return (f"MQTT to {channel.host}:{channel.port} without TLS: logins and messages cross the network in "
                "clear; set tls (and a username with password_file)")  # fmt: skip
    return None
