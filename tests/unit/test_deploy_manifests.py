"""deploy/k8s/hub.yaml: valid YAML, a valid embedded hub.yaml, and a sync store that outlives its pod."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tandem.cloud_hub.config import HubConfig
from tandem.config import parse_config

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "hub.yaml"


def manifest() -> dict[str, dict[str, Any]]:
    """The manifest's objects by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8"))}


def test_the_embedded_hub_config_is_valid() -> None:
    text = manifest()["ConfigMap"]["data"]["hub.yaml"]
    config = parse_config(yaml.safe_load(text), HubConfig, source=f"{MANIFEST}: ConfigMap hub.yaml")
    assert config.sync is not None and config.sync.store.path.is_absolute()


def test_each_replicas_sync_store_is_on_a_persistent_volume_of_its_own() -> None:
    objects = manifest()
    assert "StatefulSet" in objects, f"{MANIFEST}: the hub replicas must be a StatefulSet (a volume per replica)"
    spec = objects["StatefulSet"]["spec"]
    assert spec["serviceName"] == objects["Service"]["metadata"]["name"]
    assert objects["Service"]["spec"]["clusterIP"] == "None"
    claims = {template["metadata"]["name"] for template in spec["volumeClaimTemplates"]}
    pod = spec["template"]["spec"]
    mounts = {mount["mountPath"]: mount["name"] for mount in pod["containers"][0]["volumeMounts"]}
    declared = {volume["name"] for volume in pod["volumes"]} | claims
    assert set(mounts.values()) <= declared, f"{MANIFEST}: a mount without a volume: {set(mounts.values()) - declared}"
    store = PurePosixPath(yaml.safe_load(objects["ConfigMap"]["data"]["hub.yaml"])["sync"]["store"]["path"])
    under = [path for path in mounts if store.is_relative_to(path)]
    assert under, f"{MANIFEST}: sync.store.path {store} is on no mounted volume (the pod's ephemeral disk)"
    deepest = max(under, key=len)
    assert mounts[deepest] in claims, f"{MANIFEST}: sync.store.path {store} is on {mounts[deepest]!r}, not a claim"


def test_broker_passwords_come_from_a_mounted_secret() -> None:
    objects = manifest()
    config = yaml.safe_load(objects["ConfigMap"]["data"]["hub.yaml"])
    logins = [*config["channels"], config["sync"]["mqtt"]]
    pod = objects["StatefulSet"]["spec"]["template"]["spec"]
    secrets = {volume["name"] for volume in pod["volumes"] if "secret" in volume}
    mounts = {mount["mountPath"]: mount["name"] for mount in pod["containers"][0]["volumeMounts"]}
    for login in logins:
        assert "password" not in login, f"{MANIFEST}: a password in the ConfigMap; use password_file and a Secret"
        assert login.get("username") and login.get("password_file"), f"{MANIFEST}: {login} has no broker login"
        secret = PurePosixPath(login["password_file"])
        under = [path for path in mounts if secret.is_relative_to(path)]
        assert under and mounts[max(under, key=len)] in secrets, f"{MANIFEST}: {secret} is not on a Secret volume"


def test_probes_ask_the_hub_itself_and_the_grace_period_covers_its_drain() -> None:
    objects = manifest()
    pod = objects["StatefulSet"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config = parse_config(yaml.safe_load(objects["ConfigMap"]["data"]["hub.yaml"]), HubConfig, source=str(MANIFEST))
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert config.metrics.port == ports["metrics"] and config.metrics.host == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_grace_s
