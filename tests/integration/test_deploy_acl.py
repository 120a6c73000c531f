"""deploy/mosquitto.conf and deploy/tandem.acl in a real Mosquitto, as shipped (only ports and paths changed).

Devices log in on the device listener, one user name per connection
("<device>" for activations, "sync/<device>" for sync); hubs on the hub
listener. Devices hear their own and their groups' topics, no one else's, and
no device can take over another's connection by choosing its client id.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tandem.transport.config import MqttConfig
from tandem.transport.envelope import Envelope, Kind
from tandem.transport.errors import ChannelTimeout, ConnectError
from tandem.transport.mqtt_channel import MqttClient, MqttServer
from tests.fixtures.broker import Mosquitto, find_mosquitto, free_port

pytestmark = pytest.mark.broker

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ACL_FILE = DEPLOY / "tandem.acl"
SYNC_PREFIX = "tandem/v1/sync"
DEVICE_PASSWORDS = {
    "edge-1": "edge-1-secret", "sync/edge-1": "edge-1-sync-secret",
    "edge-2": "edge-2-secret", "sync/edge-2": "edge-2-sync-secret",
}  # fmt: skip
HUB_PASSWORDS = {"hub": "hub-secret"}
PASSWORDS = {**DEVICE_PASSWORDS, **HUB_PASSWORDS}


class ShippedMosquitto(Mosquitto):
    """Mosquitto running deploy/mosquitto.conf with its ports, password files and folders moved into ``workdir``."""

    def __init__(self, workdir: Path, *, devices_passwd: Path, hubs_passwd: Path, **options: Any) -> None:
        super().__init__(workdir, allow_anonymous=False, **options)
        self.hub_port = free_port(self.host)
        self.extra_ports = [self.hub_port]
        self.devices_passwd, self.hubs_passwd = devices_passwd, hubs_passwd

    def config_text(self) -> str:
        """The shipped file with each deployment-specific line replaced; a line not found fails loudly."""
        text = (DEPLOY / "mosquitto.conf").read_text()
        for old, new in {
            "listener 1883\n": f"listener {self.port} {self.host}\n",
            "listener 1884\n": f"listener {self.hub_port} {self.host}\n",
            "/etc/mosquitto/passwd-devices": str(self.devices_passwd),
            "/etc/mosquitto/passwd-hubs": str(self.hubs_passwd),
            "/etc/mosquitto/tandem.acl": str(ACL_FILE),
            "persistence_location /var/lib/mosquitto/": f"persistence_location {self.workdir}/",
        }.items():
            assert old in text, f"deploy/mosquitto.conf no longer has {old!r}: update this test with it"
            text = text.replace(old, new)
        logging = super().config_text().split("\n", 2)[2]  # the fixture's log and user lines, not its listener
        return text + logging


def _password_file(path: Path, users: dict[str, str]) -> Path:
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        pytest.skip("no mosquitto_passwd binary on PATH (it comes with the mosquitto package)")
    for number, (user, password) in enumerate(users.items()):
        create = ["-c"] if number == 0 else []
        subprocess.run([binary, "-b", *create, str(path), user, password], check=True, capture_output=True)
    return path


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[ShippedMosquitto]:
    """Mosquitto as deploy/ ships it, with a password for each user of :data:`PASSWORDS`."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("no mosquitto binary on PATH or at /usr/sbin/mosquitto")
    broker = ShippedMosquitto(
        tmp_path / "broker", binary=binary,
        devices_passwd=_password_file(tmp_path / "passwd-devices", DEVICE_PASSWORDS),
        hubs_passwd=_password_file(tmp_path / "passwd-hubs", HUB_PASSWORDS),
    )  # fmt: skip
    with broker:
        yield broker


def _recv_or_none(channel: MqttClient, timeout: float) -> Envelope | None:
    try:
        return channel.recv(timeout=timeout)
    except ChannelTimeout:
        return None


def test_a_device_hears_group_announcements_and_its_own_topics_only(acl_broker: ShippedMosquitto) -> None:
    def login(user: str) -> dict[str, Any]:
        port = acl_broker.hub_port if user in HUB_PASSWORDS else acl_broker.port
        return {"port": port, "topic_prefix": SYNC_PREFIX, "username": user, "password": PASSWORDS[user]}

    hub = MqttServer(**login("hub"), shared_group="hub-sync", session_expiry_s=0)
    edge = MqttClient(device_id="edge-1", groups=["line-3"], session_expiry_s=0, **login("sync/edge-1"))
    # edge-2's login subscribing to edge-1's topics (and group line-3): the ACL must keep edge-1's own messages away.
    impostor = MqttClient(device_id="edge-1", groups=[], session_expiry_s=0, **login("sync/edge-2"))
    try:
        hub.send_to_group(Envelope(Kind.PLAN, plan_id="p", plan_version=2), "line-3")
        announcement = _recv_or_none(edge, timeout=5)
        assert announcement is not None, f"device edge-1 got no plan announcement for group line-3 via {ACL_FILE}"
        assert (announcement.kind, announcement.plan_version) == (Kind.PLAN, 2)

        hub.send(Envelope(Kind.ACK, device_id="edge-1"), to="edge-1")
        ack = _recv_or_none(edge, timeout=5)
        assert ack is not None and ack.kind == Kind.ACK, f"device edge-1 got no ack on its own topic via {ACL_FILE}"
        assert _recv_or_none(impostor, timeout=0.3) is None, "user edge-2 read device edge-1's down topic"

        edge.send(Envelope(Kind.TELEMETRY))
        heard = hub.recv(timeout=5)
        assert (heard.sender, heard.kind) == ("edge-1", Kind.TELEMETRY)
        impostor.send(Envelope(Kind.TELEMETRY))
        with pytest.raises(ChannelTimeout):
            hub.recv(timeout=0.3)  # user edge-2 may not publish on edge-1's up topics
    finally:
        for channel in (impostor, edge, hub):
            channel.close()


def test_logins_read_the_password_from_password_file(acl_broker: ShippedMosquitto, tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORDS["sync/edge-1"] + "\n")  # as `kubectl create secret --from-file` or an editor leaves it
    config = MqttConfig(port=acl_broker.port, topic_prefix=SYNC_PREFIX, username="sync/edge-1", password_file=secret)
    hub = MqttServer(port=acl_broker.hub_port, topic_prefix=SYNC_PREFIX, username="hub", password=PASSWORDS["hub"],
                     session_expiry_s=0)  # fmt: skip
    edge = MqttClient.from_config(config, device_id="edge-1")
    try:
        edge.send(Envelope(Kind.TELEMETRY))
        assert hub.recv(timeout=5).sender == "edge-1"
    finally:
        edge.close()
        hub.close()
    missing = config.model_copy(update={"password_file": tmp_path / "nowhere"})
    unreadable = rf"password_file: {tmp_path / 'nowhere'}: cannot read the MQTT password: No such file"
    with pytest.raises(ConnectError, match=unreadable):
        MqttClient.from_config(missing, device_id="edge-1")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConnectError, match=rf"password_file: {tmp_path / 'empty'} is empty"):
        MqttClient.from_config(config.model_copy(update={"password_file": tmp_path / "empty"}), device_id="edge-1")
    with pytest.raises(ValueError, match="password and password_file: set one of them, not both"):
        MqttConfig(username="edge-1", password="x", password_file=secret)


class Watched:
    """A plain paho connection that records its disconnects and what it hears."""

    def __init__(self, broker: ShippedMosquitto, user: str, client_id: str, *, port: int | None = None) -> None:
        self.disconnects: list[str] = []
        self.heard: list[str] = []
        self.connected = threading.Event()
        self.refused = ""
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.username_pw_set(user, PASSWORDS[user])
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, flags, reason, props: self.disconnects.append(str(reason))
        self.client.on_message = lambda c, u, message: self.heard.append(message.topic)
        self.client.connect(broker.host, port or broker.port)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason: Any, props: object) -> None:
        if reason.is_failure:
            self.refused = str(reason)
        else:
            self.connected.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_device_cannot_take_over_another_devices_connection_by_its_client_id(acl_broker: ShippedMosquitto) -> None:
    """The issue's attack: edge-2 connects with the client id of edge-1's sync connection; both kept dropping."""
    victim = Watched(acl_broker, "sync/edge-1", "tandem-sync-edge-1")
    assert victim.connected.wait(5), victim.refused
    victim.client.subscribe(f"{SYNC_PREFIX}/edge-1/down/#", qos=1)
    attackers = []
    for client_id in ("tandem-sync-edge-1", "sync/edge-1"):  # one after the other: both would be "edge-2"
        attackers.append(Watched(acl_broker, "edge-2", client_id))
        assert attackers[-1].connected.wait(5), attackers[-1].refused  # it may connect, as itself
        attackers[-1].close()
    # On the hub listener a device's login is refused outright, whatever client id it picks.
    on_hub_listener = Watched(acl_broker, "edge-2", "tandem-sync-edge-1", port=acl_broker.hub_port)
    hub = Watched(acl_broker, "hub", "tandem-hub-sync-1", port=acl_broker.hub_port)
    try:
        assert hub.connected.wait(5), hub.refused
        deadline = time.monotonic() + 5
        while not on_hub_listener.refused and not on_hub_listener.disconnects and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not on_hub_listener.connected.is_set()
        hub.client.publish(f"{SYNC_PREFIX}/edge-1/down/plan", b"p", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while not victim.heard and time.monotonic() < deadline:
            time.sleep(0.05)
        assert victim.heard == [f"{SYNC_PREFIX}/edge-1/down/plan"], "the victim lost its session"
        assert victim.disconnects == [], f"edge-1's connection was knocked off: {victim.disconnects}"
        assert all(a.disconnects == ["Normal disconnection"] for a in attackers), [a.disconnects for a in attackers]
    finally:
        for watched in (*attackers, on_hub_listener, hub, victim):
            watched.close()
