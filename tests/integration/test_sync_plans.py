"""Plans down to the fleet through a real Mosquitto: convergence, resumable downloads, refusals, rollback."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tandem.cli import main
from tandem.cloud_hub.store import SqliteStore
from tandem.cloud_hub.sync import HubSync, open_hub_sync_channel
from tandem.contracts.manifest import PlanManifest, scan_plan_dir
from tandem.edge_agent.agent import EdgeAgent
from tandem.edge_agent.config import EdgeConfig
from tandem.edge_agent.outbox import Outbox
from tandem.edge_agent.plan_install import full_model_self_check, make_installer
from tandem.edge_agent.plan_view import AgentPlan, SplitOption
from tandem.edge_agent.sync import EdgeSync
from tandem.executors import open_executor
from tandem.transport.channel import Channel
from tandem.transport.config import MqttConfig
from tandem.transport.envelope import Envelope, Kind, pack
from tandem.transport.mqtt_channel import MqttClient
from tests.fixtures.broker import Mosquitto
from tests.integration.sync_support import (
    ToyPlan,
    closing_all,
    edge_config,
    hub_config,
    start_edge_sync,
    start_hub_sync,
    wait_until,
    write_toy_plan,
)

pytestmark = pytest.mark.broker

X = np.array([[1.0, -2.0, 0.5, 3.0]], np.float32)


def agent_plan(folder: Path, manifest_or_id: PlanManifest | str, version: int = 1) -> AgentPlan:
    """The agent's view of a toy plan folder: one edge-only split running the full model."""
    plan_id = manifest_or_id.plan_id if isinstance(manifest_or_id, PlanManifest) else manifest_or_id
    version = manifest_or_id.version if isinstance(manifest_or_id, PlanManifest) else version
    only = SplitOption("edge_only", None, (), edge_ms=1.0, cloud_ms=0.0, wire_bytes=0, edge_only=True)
    return AgentPlan(plan_id, version, ("x",), ("logits",), folder / "model.onnx", (only,))


@dataclass
class Device:
    """An edge box: a real agent serving a plan, its outbox and its sync."""

    name: str
    agent: EdgeAgent
    outbox: Outbox
    sync: EdgeSync
    swaps: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.sync.stop()
        self.agent.stop()
        self.outbox.close()

    @property
    def version(self) -> int:
        return self.agent.plan.version


@pytest.fixture
def hub(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[HubSync]:
    store = SqliteStore(tmp_path / "store")
    sync = start_hub_sync(hub_config(mosquitto.port), store)
    with closing_all(store, sync):
        yield sync


@pytest.fixture
def plans(tmp_path: Path) -> dict[str, ToyPlan]:
    root = tmp_path / "hub-plans"
    return {
        "v1": write_toy_plan(root / "v1", plan_id="toy-a", scale=1.0),
        "v2": write_toy_plan(root / "v2", plan_id="toy-b", scale=2.0, extra_bytes=300_000),
        "v3": write_toy_plan(root / "v3", plan_id="toy-c", scale=3.0),
    }


def start_device(
    broker: Mosquitto, tmp_path: Path, name: str, first: ToyPlan, *, groups: list[str] | None = None, **sync: Any
) -> Device:
    """An agent serving ``first`` as version 1 (edge-only), with an EdgeSync that installs what the hub publishes."""
    config = EdgeConfig(device_id=name, plan=first.folder, codec="raw", executor="onnxruntime",
                        channel=MqttConfig(port=broker.port), telemetry_interval_s=60)  # fmt: skip
    channel = MqttClient(device_id=name, port=broker.port, session_expiry_s=0)
    agent = EdgeAgent(config, agent_plan(first.folder, "toy-a"), channel)
    agent.start()
    outbox = Outbox(tmp_path / name / "outbox.sqlite", device_id=name)
    device = Device(name, agent, outbox, None)  # type: ignore[arg-type]

    def swap(plan: AgentPlan) -> None:
        agent.swap_plan(plan)
        device.swaps.append(f"{plan.plan_id}@{plan.version}")

    install = make_installer(
        lambda folder, manifest: loaded(agent_plan(folder, manifest)),
        swap,
        full_model_self_check(lambda: {"x": X}, executor="onnxruntime"),
    )
    config_sync = edge_config(broker.port, tmp_path / name, groups=groups or [], **sync)
    device.sync = start_edge_sync(config_sync, outbox, name, install=install,
                                  plan_in_use=lambda: (agent.plan.plan_id, agent.plan.version))  # fmt: skip
    return device


def loaded(plan: AgentPlan) -> AgentPlan:
    """The plan, once its full model is known to load."""
    open_executor("onnxruntime", plan.full_model)
    return plan


def serves(device: Device, plan: ToyPlan) -> bool:
    """Whether the device's answers are those of ``plan``'s model."""
    return bool(np.allclose(device.agent.infer(X).outputs["logits"], X @ plan.weights, rtol=1e-5))


def fleet_versions(hub: HubSync) -> dict[str, Any]:
    return {row.device: row.get("plan_version") for row in hub.fleet()}


def test_plan_updates_converge_on_every_device(
    mosquitto: Mosquitto, tmp_path: Path, hub: HubSync, plans: dict[str, ToyPlan]
) -> None:
    devices = [start_device(mosquitto, tmp_path, f"cam-{i}", plans["v1"], groups=["line-3"]) for i in range(3)]
    loner = start_device(mosquitto, tmp_path, "lab-1", plans["v1"])
    with closing_all(*devices, loner):
        wait_until(lambda: len(hub.fleet()) == 4, 15, "four devices report")
        hub.publish_plan(plans["v2"].folder, version=2, group="line-3")
        hub.publish_plan(plans["v3"].folder, version=3, device="lab-1")
        late = start_device(mosquitto, tmp_path, "cam-9", plans["v1"], groups=["line-3"])  # joins after the publish
        with closing_all(late):
            wait_until(lambda: fleet_versions(hub) == {"cam-0": 2, "cam-1": 2, "cam-2": 2, "cam-9": 2, "lab-1": 3},
                       40, "every device on its target version")  # fmt: skip
            for device in [*devices, late]:
                assert device.swaps == ["toy-b@2"]
                assert serves(device, plans["v2"])
                current = device.sync.releases.current()
                assert current is not None and current[0].key == "toy-b@2"
                assert current[1].name == "toy-b-v2"
            assert loner.swaps == ["toy-c@3"] and serves(loner, plans["v3"])
            assert all(row.get("plan_state") == "serving" for row in hub.fleet())


def test_tandem_publish_rolls_a_plan_out_while_the_hub_runs(
    mosquitto: Mosquitto, tmp_path: Path, hub: HubSync, plans: dict[str, ToyPlan], capsys: pytest.CaptureFixture[str]
) -> None:
    hub_yaml = tmp_path / "hub.yaml"  # the running hub's store and broker (the hub fixture's reoffer_s is 1 s)
    hub_yaml.write_text(f"plans: [{plans['v1'].folder}]\nsync:\n  mqtt: {{port: {mosquitto.port}}}\n"
                        "  store: {path: store}\n  reoffer_s: 1\n")  # fmt: skip
    canary = start_device(mosquitto, tmp_path, "cam-0", plans["v1"], groups=["canary"])
    rest = start_device(mosquitto, tmp_path, "cam-1", plans["v1"], groups=["line-3"])
    with closing_all(canary, rest):
        wait_until(lambda: len(hub.fleet()) == 2, 15, "both devices report")
        assert main(["publish", str(plans["v2"].folder), "--config", str(hub_yaml), "--group", "canary",
                     "--version", "2"]) == 0  # fmt: skip
        out = capsys.readouterr().out
        files = scan_plan_dir(plans["v2"].folder, plan_id="toy-b", version=2, model="toy")
        assert (f"published plan toy-b@2 for model toy ({len(files.artifacts)} files, {files.total_bytes} bytes) "
                f"to group canary in {hub.store.path}") in out  # fmt: skip
        assert "running hubs read the targets every sync.reoffer_s (1 s)" in out
        wait_until(lambda: fleet_versions(hub) == {"cam-0": 2, "cam-1": 1}, 30, "the canary on v2, the rest on v1")
        assert canary.swaps == ["toy-b@2"] and serves(canary, plans["v2"]) and rest.swaps == []

        cloud_plan = tmp_path / "needs-a-hub"  # a plan with a cloud part the hub does not load
        cloud_plan.mkdir()
        split = "splits: [{id: cut-1, cloud_model: splits/cut-1/cloud.onnx}]"
        (cloud_plan / "plan.yaml").write_text(f"plan_id: mnv2\nversion: 4\nmodel: {{name: toy}}\n{split}\n")
        assert main(["publish", str(cloud_plan), "--config", str(hub_yaml), "--group", "line-3"]) == 2
        err = capsys.readouterr().err
        assert f"tandem publish: plan mnv2 v4 ({cloud_plan}) is not among the plans this hub serves (none)" in err
        assert f"add its folder to plans in {hub_yaml} and restart the hubs first" in err
        assert main(["publish", str(tmp_path), "--config", str(hub_yaml), "--device", "cam-1"]) == 2
        assert f"tandem publish: {tmp_path}: not a plan folder (no plan.yaml)" in capsys.readouterr().err
        elsewhere = tmp_path / "elsewhere.yaml"  # a store path no hub uses: refused, not created
        elsewhere.write_text(f"plans: [{plans['v1'].folder}, missing]\nsync:\n  store: {{path: other}}\n")
        assert main(["publish", str(plans["v3"].folder), "--config", str(elsewhere), "--device", "cam-1"]) == 2
        assert f"{elsewhere}: plans.1: {tmp_path / 'missing'} holds no plan.yaml" in capsys.readouterr().err
        elsewhere.write_text(f"plans: [{plans['v1'].folder}]\nsync:\n  store: {{path: other}}\n")
        assert main(["publish", str(plans["v3"].folder), "--config", str(elsewhere), "--device", "cam-1"]) == 2
        assert f"no hub store at {tmp_path / 'other' / 'store.sqlite'} (sync.store.path in {elsewhere})" in \
            capsys.readouterr().err
        assert not (tmp_path / "other").exists() and rest.version == 1


def test_corrupted_artifact_is_rejected_and_the_old_plan_keeps_serving(
    mosquitto: Mosquitto, tmp_path: Path, hub: HubSync, plans: dict[str, ToyPlan], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    manifest = hub.publish_plan(plans["v2"].folder, version=2, device="cam-1")
    model = plans["v2"].folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content: bit rot on the hub's disk after publishing
    model.write_bytes(bytes(data))
    device = start_device(mosquitto, tmp_path, "cam-1", plans["v1"])  # gets the plan when it first reports
    with closing_all(device), caplog.at_level(logging.WARNING):
        wait_until(lambda: device.sync.plan_state == "rejected", 20, "the download refused")
        assert "plan toy-b@2 rejected, the current plan keeps serving: artifact_corrupted: model.onnx: sha256" in \
            caplog.text
        assert f"differs from the manifest's {manifest.entry('model.onnx').sha256[:16]}..." in caplog.text  # type: ignore[union-attr]
        assert device.version == 1 and device.swaps == []
        assert serves(device, plans["v1"])
        assert device.sync.releases.current() is None
        assert not (device.sync.releases.staging / "toy-b-v2").exists()
        wait_until(lambda: "artifact_corrupted" in str(hub.fleet()[0].get("plan_error")), 10, "hub told")
        assert hub.fleet()[0].get("failed_plans") == ["toy-b@2"]
        hub.publish_plan(plans["v3"].folder, version=3, device="cam-1")  # a good version still installs
        wait_until(lambda: device.version == 3, 20, "v3 installed")
        assert serves(device, plans["v3"])


def test_truncated_artifact_is_rejected_by_size(
    mosquitto: Mosquitto, tmp_path: Path, hub: HubSync, plans: dict[str, ToyPlan], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    hub.publish_plan(plans["v2"].folder, version=2, device="cam-1")
    extra = plans["v2"].folder / "extra.bin"
    extra.write_bytes(extra.read_bytes()[:1000])  # truncated after publishing
    device = start_device(mosquitto, tmp_path, "cam-1", plans["v1"])  # gets the plan when it first reports
    with closing_all(device), caplog.at_level(logging.WARNING):
        wait_until(lambda: device.sync.plan_state == "rejected", 20, "the download refused")
        expected = "artifact_size_mismatch: extra.bin: the hub's file is 1000 bytes, the manifest says 300000"
        assert expected in caplog.text
        assert device.version == 1 and serves(device, plans["v1"])


def test_a_plan_for_another_model_is_refused(
    mosquitto: Mosquitto, tmp_path: Path, hub: HubSync, plans: dict[str, ToyPlan], caplog: pytest.LogCaptureFixture
) -> None:
    device = start_device(mosquitto, tmp_path, "cam-1", plans["v1"])
    with closing_all(device), caplog.at_level(logging.WARNING):
        wait_until(lambda: len(hub.fleet()) == 1, 15, "device reports")
        hub.publish_plan(plans["v2"].folder, version=2, device="cam-1", model="resnet50")
        wait_until(lambda: device.sync.plan_state == "rejected", 20, "the announcement refused")
        assert "plan_for_another_model: plan toy-b@2 is for model 'resnet50'; this device serves 'toy'" in caplog.text
        assert device.sync.downloader.stats["chunks"] == 0
        assert device.version == 1 and serves(device, plans["v1"])


def test_a_plan_that_fails_to_load_or_its_self_check_is_rolled_back(
    mosquitto: Mosquitto, tmp_path: Path, hub: HubSync, plans: dict[str, ToyPlan], caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "hub-plans" / "broken"
    write_toy_plan(broken, plan_id="toy-broken", scale=1.0)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    nan = write_toy_plan(tmp_path / "hub-plans" / "nan", plan_id="toy-nan", scale=float("nan"))
    device = start_device(mosquitto, tmp_path, "cam-1", plans["v1"])
    with closing_all(device), caplog.at_level(logging.WARNING):
        wait_until(lambda: len(hub.fleet()) == 1, 15, "device reports")
        hub.publish_plan(broken, version=2, device="cam-1")
        wait_until(lambda: device.sync.plan_state == "rolled_back", 20, "v2 rolled back")
        assert "plan toy-broken@2 rolled back, the previous plan keeps serving: plan_failed_load: plan " \
               "toy-broken@2 in" in caplog.text
        hub.publish_plan(nan.folder, version=3, device="cam-1")
        wait_until(lambda: "toy-nan@3" in device.sync.releases.failed(), 20, "v3 rolled back")
        assert "plan_failed_check: plan toy-nan@3: ValueError: the full model's output 'logits' is not finite" in \
            caplog.text
        assert device.version == 1 and device.swaps == [] and serves(device, plans["v1"])
        assert device.sync.releases.current() is None
        assert sorted(device.sync.releases.failed()) == ["toy-broken@2", "toy-nan@3"]


def test_an_interrupted_download_resumes_from_the_staged_part(
    mosquitto: Mosquitto, tmp_path: Path, hub: HubSync, plans: dict[str, ToyPlan], caplog: pytest.LogCaptureFixture
) -> None:
    big = write_toy_plan(tmp_path / "hub-plans" / "big", plan_id="toy-big", scale=2.0, extra_bytes=3_000_000)
    options = {"artifact_chunk_bytes": 32 << 10, "artifact_window": 2}
    device = start_device(mosquitto, tmp_path, "cam-1", plans["v1"], **options)
    part = tmp_path / "cam-1" / "plans" / "staging" / "toy-big-v2" / "extra.bin.part"
    # Until the box has gone, the hub leaves every request for extra.bin past 512 KiB unanswered (as a lost
    # message): the download stops mid-way on any host speed, and the hub keeps serving everything else.
    gate, halfway = threading.Event(), 512 << 10
    serve_chunk = hub._serve_chunk

    def gated(channel: Channel, request: Envelope) -> None:
        offset = request.meta.get("offset")
        past = request.meta.get("path") == "extra.bin" and isinstance(offset, int) and offset >= halfway
        if not past or gate.is_set():
            serve_chunk(channel, request)

    hub._serve_chunk = gated  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO):
        try:
            wait_until(lambda: len(hub.fleet()) == 1, 15, "device reports")
            hub.publish_plan(big.folder, version=2, device="cam-1")
            wait_until(lambda: part.exists() and part.stat().st_size >= halfway, 30, "half a megabyte staged")
            device.sync.stop()  # the box goes away mid-download
            gate.set()
            staged = part.stat().st_size
            assert staged == halfway
            served_before = hub.counters["chunks"]
            config_sync = edge_config(mosquitto.port, tmp_path / "cam-1", **options)
            device.sync = start_edge_sync(config_sync, device.outbox, "cam-1", install=device.sync.downloader.install,
                                          plan_in_use=lambda: (device.agent.plan.plan_id, device.agent.plan.version))
            wait_until(lambda: device.version == 2, 40, "v2 installed after the resume")
        finally:
            device.close()
    assert f"resuming extra.bin of plan toy-big@2 at byte {staged} of 3000000" in caplog.text
    assert device.sync.downloader.stats["resumed_bytes"] == staged
    chunks_after = hub.counters["chunks"] - served_before
    chunk = 32 << 10
    model_chunks = -(-(big.folder / "model.onnx").stat().st_size // chunk)
    assert chunks_after <= -(-(3_000_000 - staged) // chunk) + model_chunks + 3  # only the rest was fetched
    assert device.sync.releases.current() is not None


def test_a_message_on_the_device_topic_naming_another_device_is_rejected(
    mosquitto: Mosquitto, tmp_path: Path, hub: HubSync, plans: dict[str, ToyPlan], caplog: pytest.LogCaptureFixture
) -> None:
    device = start_device(mosquitto, tmp_path, "cam-1", plans["v1"])
    intruder = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    intruder.connect(mosquitto.host, mosquitto.port)
    intruder.loop_start()
    with closing_all(device), caplog.at_level(logging.WARNING):
        try:
            wait_until(lambda: len(hub.fleet()) == 1, 15, "device reports")
            manifest = hub.publish_plan(plans["v2"].folder, version=2, device="cam-9")
            forged = Envelope(Kind.PLAN, device_id="cam-9", meta=manifest.to_meta())
            intruder.publish("tandem/v1/sync/cam-1/down/plan", pack(forged), qos=1).wait_for_publish(5)
            wait_until(lambda: device.sync.counters["bad_messages"] == 1, 10, "the forged plan seen")
        finally:
            intruder.disconnect()
            intruder.loop_stop()
        assert "sync: rejected a message from the hub (malformed_header): device: header says 'cam-9' but the " \
               "message came on the topics of device 'cam-1'" in caplog.text
        assert device.sync.downloader.busy_with is None and device.version == 1
        assert serves(device, plans["v1"])


def test_plans_listed_in_the_hub_config_are_announced_at_start(
    mosquitto: Mosquitto, tmp_path: Path, plans: dict[str, ToyPlan]
) -> None:
    numbered = write_toy_plan(tmp_path / "hub-plans" / "v4", plan_id="toy-d", scale=4.0, version=4)
    config = hub_config(mosquitto.port, publish=[{"plan": "hub-plans/v4", "group": "line-3"}])
    store = SqliteStore(tmp_path / "store")
    hub = HubSync(config, store, channel=open_hub_sync_channel(config), base=tmp_path)
    device = start_device(mosquitto, tmp_path, "cam-1", plans["v1"], groups=["line-3"])
    with closing_all(store, device):
        hub.start()
        with closing_all(hub):
            wait_until(lambda: device.version == 4, 20, "v4 (plan.yaml's version) installed")
            assert serves(device, numbered)
            with pytest.raises(ValueError, match=r"pass plan_id=, version= and model= \(plan.yaml gives plan_id "
                               r"'toy-b', version None, model.name 'toy'\)"):  # fmt: skip
                hub.publish_plan(plans["v2"].folder, group="line-3")


def test_the_published_target_survives_a_hub_restart_and_rollback_converges_the_group(
    mosquitto: Mosquitto, tmp_path: Path, plans: dict[str, ToyPlan], caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """#16: a restart re-applying hub.yaml's sync.publish must not undo `tandem publish`; a rollback must converge."""
    store_path = tmp_path / "store"
    hub_yaml = tmp_path / "hub.yaml"
    hub_yaml.write_text(f"plans: [{plans['v1'].folder}]\nsync:\n  mqtt: {{port: {mosquitto.port}}}\n"
                        "  store: {path: store}\n  reoffer_s: 1\n")  # fmt: skip
    seeded = {"plan": plans["v1"].folder, "version": 1, "group": "line-3"}
    first = SqliteStore(store_path)
    hub = start_hub_sync(hub_config(mosquitto.port, publish=[seeded]), first)
    devices = [start_device(mosquitto, tmp_path, f"cam-{i}", plans["v1"], groups=["line-3"]) for i in range(2)]
    with closing_all(*devices):
        with closing_all(first, hub):
            wait_until(lambda: len(hub.fleet()) == 2, 15, "both devices report")
            assert main(["publish", str(plans["v2"].folder), "--config", str(hub_yaml), "--group", "line-3",
                         "--version", "2"]) == 0  # fmt: skip
            wait_until(lambda: fleet_versions(hub) == {"cam-0": 2, "cam-1": 2}, 30, "the group on v2")
        # The restart: the same hub.yaml entry seeds v1 again.
        second = SqliteStore(store_path)
        with caplog.at_level(logging.WARNING, "tandem.hub.sync"):
            restarted = start_hub_sync(hub_config(mosquitto.port, publish=[seeded]), second)
        with closing_all(second, restarted):
            assert second.targets()["group:line-3"] == ("toy-b", 2)
            assert "group line-3 keeps its target toy-b@2 (set by tandem publish); hub.yaml's sync.publish names " \
                   "toy-a@1" in caplog.text
            # v1 over v2 without --rollback: refused, naming both.
            assert main(["publish", str(plans["v1"].folder), "--config", str(hub_yaml), "--group", "line-3",
                         "--version", "1"]) == 2  # fmt: skip
            assert "group line-3's target is toy-b@2; publishing version 1 would roll it back: pass --rollback" \
                in capsys.readouterr().err
            # A group nobody is in: published, with a warning.
            assert main(["publish", str(plans["v1"].folder), "--config", str(hub_yaml), "--group", "nobody",
                         "--version", "1"]) == 0  # fmt: skip
            assert "warning: no device has reported group 'nobody' (groups seen: line-3)" in capsys.readouterr().err
            # The rollback: every device of the group goes back to v1.
            assert main(["publish", str(plans["v1"].folder), "--config", str(hub_yaml), "--group", "line-3",
                         "--version", "1", "--rollback"]) == 0  # fmt: skip
            assert "rolled back plan toy-a@1" in capsys.readouterr().out
            wait_until(lambda: fleet_versions(restarted) == {"cam-0": 1, "cam-1": 1}, 40, "the group back on v1")
            for device in devices:
                assert device.swaps == ["toy-b@2", "toy-a@1"] and serves(device, plans["v1"])
            assert main(["fleet", "--store", str(store_path)]) == 0
            table = capsys.readouterr().out.splitlines()
            assert table[0].split()[3:6] == ["running", "target", "state"]
            rows = [line.split() for line in table[1:]]
            assert all(cells[4:9] == ["toy-a", "v1", "toy-a", "v1", "serving"] for cells in rows), table
