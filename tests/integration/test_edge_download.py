"""Edges download only what they run: the plan announced to them lists no cloud-only part (#16).

A real plan with a cut (digits_cnn, cut forced at its first ReLU, so the
folder holds splits/cut-01/edge.onnx and cloud.onnx) is published through a
real HubSync and Mosquitto; the announcement the device hears is read off the
broker. The edge's copy (those files only) must load and serve as a plan.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tandem.cloud_hub.store import SqliteStore
from tandem.contracts.manifest import PlanManifest, scan_plan_dir
from tandem.contracts.plan import ArtifactError, load_plan
from tandem.edge_agent.plan_view import load_agent_plan
from tandem.transport.envelope import unpack
from tests.fixtures.broker import Mosquitto
from tests.integration.sync_support import closing_all, hub_config, start_hub_sync, wait_until

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def cut_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plans") / "digits"
    result = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "partition", "digits_cnn", "--cut", "/Relu_output_0", "--out", str(out),
         "--no-progress"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_announcement_lists_no_cloud_part_and_the_edge_copy_serves(
    mosquitto: Mosquitto, tmp_path: Path, cut_plan: Path
) -> None:
    plan = load_plan(cut_plan)
    cloud_only = plan.cloud_only_files()
    assert cloud_only and all(path.endswith("cloud.onnx") for path in cloud_only)
    heard: list[bytes] = []
    subscribed = threading.Event()
    listener = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    listener.on_message = lambda c, u, m: heard.append(bytes(m.payload))
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.connect(mosquitto.host, mosquitto.port)
    listener.loop_start()
    listener.subscribe("tandem/v1/sync/cam-1/down/plan", qos=1)
    assert subscribed.wait(5)
    store = SqliteStore(tmp_path / "store")
    hub = start_hub_sync(hub_config(mosquitto.port), store)
    try:
        with closing_all(store, hub):
            hub.publish_plan(cut_plan, device="cam-1")
            wait_until(lambda: bool(heard), 10, "the announcement")
    finally:
        listener.disconnect()
        listener.loop_stop()
    announced = PlanManifest.from_meta(unpack(heard[0]).meta)
    paths = {entry.path for entry in announced.artifacts}
    assert paths.isdisjoint(cloud_only), paths
    assert {"plan.yaml", "model.onnx", "splits/cut-01/edge.onnx"} <= paths
    whole = scan_plan_dir(cut_plan, plan_id=plan.plan_id, version=plan.version, model=plan.model.name)
    saved = whole.total_bytes - announced.total_bytes
    assert saved == sum((cut_plan / path).stat().st_size for path in cloud_only)
    # The edge's copy: the announced files only. It loads and verifies as an edge plan, not as a whole one.
    copy = tmp_path / "edge-copy"
    for path in paths:
        (copy / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cut_plan / path, copy / path)
    with pytest.raises(ArtifactError, match=r"cloud\.onnx: artifact missing"):
        load_plan(copy)
    agent_plan = load_agent_plan(copy, "raw")
    head = next(s for s in agent_plan.splits if s.split_id == "cut-01")
    assert head.edge_path is not None and head.edge_path.is_file() and head.crossing
