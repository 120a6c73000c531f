"""deploy/tandem.acl in a real Mosquitto: devices hear their own and their groups' sync topics, no one else's."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tandem.transport.config import MqttConfig
from tandem.transport.envelope import Envelope, Kind
from tandem.transport.errors import ChannelTimeout, ConnectError
from tandem.transport.mqtt_channel import MqttClient, MqttServer
from tests.fixtures.broker import Mosquitto, find_mosquitto

pytestmark = pytest.mark.broker

ACL_FILE = Path(__file__).resolve().parents[2] / "deploy" / "tandem.acl"
SYNC_PREFIX = "tandem/v1/sync"
PASSWORDS = {"hub": "hub-secret", "edge-1": "edge-1-secret", "edge-2": "edge-2-secret"}


class AclMosquitto(Mosquitto):
    """A broker that logs users in from a password file and applies ``acl_file``."""

    def __init__(self, workdir: Path, *, acl_file: Path, password_file: Path, **options: Any) -> None:
        super().__init__(workdir, allow_anonymous=False, **options)
        self.acl_file = acl_file
        self.password_file = password_file

    def config_text(self) -> str:
        """The fixture's config plus the ACL and the password file."""
        return super().config_text() + f"acl_file {self.acl_file}\npassword_file {self.password_file}\n"


def _password_file(path: Path) -> Path:
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        pytest.skip("no mosquitto_passwd binary on PATH (it comes with the mosquitto package)")
    for number, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if number == 0 else []
        subprocess.run([binary, "-b", *create, str(path), user, password], check=True, capture_output=True)
    return path


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[AclMosquitto]:
    """Mosquitto with deploy/tandem.acl and a password for each user of :data:`PASSWORDS`."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("no mosquitto binary on PATH or at /usr/sbin/mosquitto")
    passwd = _password_file(tmp_path / "passwd")
    broker = AclMosquitto(tmp_path / "broker", binary=binary, acl_file=ACL_FILE, password_file=passwd)
    with broker:
        yield broker


def _recv_or_none(channel: MqttClient, timeout: float) -> Envelope | None:
    try:
        return channel.recv(timeout=timeout)
    except ChannelTimeout:
        return None


def test_a_device_hears_group_announcements_and_its_own_topics_only(acl_broker: AclMosquitto) -> None:
    def login(user: str) -> dict[str, Any]:
        return {"port": acl_broker.port, "topic_prefix": SYNC_PREFIX, "username": user, "password": PASSWORDS[user]}

    hub = MqttServer(**login("hub"), shared_group="hub-sync", session_expiry_s=0)
    edge = MqttClient(device_id="edge-1", groups=["line-3"], session_expiry_s=0, **login("edge-1"))
    # edge-2's login subscribing to edge-1's topics (and group line-3): the ACL must keep edge-1's own messages away.
    impostor = MqttClient(device_id="edge-1", groups=[], session_expiry_s=0, **login("edge-2"))
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


def test_logins_read_the_password_from_password_file(acl_broker: AclMosquitto, tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(PASSWORDS["edge-1"] + "\n")  # as `kubectl create secret --from-file` or an editor leaves it
    config = MqttConfig(port=acl_broker.port, topic_prefix=SYNC_PREFIX, username="edge-1", password_file=secret)
    hub = MqttServer(port=acl_broker.port, topic_prefix=SYNC_PREFIX, username="hub", password=PASSWORDS["hub"],
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
