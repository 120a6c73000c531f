"""Relative paths in hub and edge configs are taken from the config file's folder."""

from __future__ import annotations

from pathlib import Path

from tandem.cloud_hub.config import HubConfig
from tandem.config_paths import resolve_relative_paths
from tandem.edge_agent.config import EdgeConfig


def test_every_relative_path_of_a_hub_config_is_taken_from_the_config_folder(tmp_path: Path) -> None:
    config = HubConfig.model_validate(
        {
            "plans": ["plans/v1", "/srv/plans/v2"],
            "channels": [
                {"type": "zmq", "curve": {"secret_key_file": "certs/hub.key_secret", "authorized_clients_dir": "ok"}},
                {"type": "mqtt", "tls": {"ca_file": "certs/ca.pem", "key_file": "/etc/hub.key"}},
            ],
            "sync": {"store": {"path": "store"}, "publish": [{"plan": "plans/v1", "device": "cam-1"}]},
        }
    )
    base = tmp_path / "etc"
    resolved = resolve_relative_paths(config, base)
    assert resolved.plans == [base / "plans/v1", Path("/srv/plans/v2")]
    zmq, mqtt = resolved.channels
    assert zmq.curve is not None and zmq.curve.secret_key_file == base / "certs/hub.key_secret"
    assert zmq.curve.authorized_clients_dir == base / "ok"
    assert mqtt.tls is not None and mqtt.tls.ca_file == base / "certs/ca.pem"
    assert mqtt.tls.key_file == Path("/etc/hub.key")
    assert resolved.sync is not None and resolved.sync.store.path == base / "store"
    assert resolved.sync.publish[0].plan == base / "plans/v1"
    assert config.plans[0] == Path("plans/v1")  # the loaded config itself is left as it was


def test_a_relative_base_becomes_absolute_so_paths_survive_a_change_of_working_directory(tmp_path: Path) -> None:
    config = EdgeConfig.model_validate({"device_id": "cam-1", "plan": "../plan", "sync": {"mqtt": {}}})
    resolved = resolve_relative_paths(config, Path("configs"))
    assert resolved.plan.is_absolute() and resolved.plan == Path.cwd() / "configs" / "../plan"
    assert resolved.sync is not None and resolved.sync.outbox.path == Path.cwd() / "configs" / "tandem-outbox.sqlite"
    assert resolved.sync.plans_dir == Path.cwd() / "configs" / "tandem-plans"
    assert resolve_relative_paths(resolved, tmp_path) == resolved  # nothing relative is left
