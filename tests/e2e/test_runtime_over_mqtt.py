"""`tandem hub` and `tandem edge` as processes, activations and sync both over a real Mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tandem.edge_agent.endpoint import LocalClient
from tandem.executors import open_executor
from tests.e2e.conftest import free_port
from tests.fixtures.broker import Mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.broker]
TANDEM = [sys.executable, "-m", "tandem.cli"]


def spawn(args: list[str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*TANDEM, *args], stdout=handle, stderr=handle, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    deadline = time.monotonic() + 120
    while ready not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{args[0]} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_split_inference_and_records_over_mqtt(
    mobilenet_plan: Path,
    mosquitto: Mosquitto,
    tmp_path: Path,
) -> None:
    broker = {"type": "mqtt", "host": mosquitto.host, "port": mosquitto.port}
    hub_config = tmp_path / "hub.yaml"
    hub_config.write_text(
        yaml.safe_dump(
            {
                "plans": [str(mobilenet_plan)],
                "channels": [{**broker, "max_payload_bytes": 8 << 20}],
                "metrics": {"port": 0},
                "sync": {"mqtt": broker, "store": {"path": str(tmp_path / "store")}},
            }
        )
    )
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    edge_config = tmp_path / "edge.yaml"
    edge_config.write_text(
        yaml.safe_dump(
            {
                "device_id": "cam-mqtt",
                "plan": str(mobilenet_plan),
                "codec": "fp16+lz4",
                "channel": {**broker, "max_payload_bytes": 8 << 20},
                "executor": "onnxruntime",
                "deadline_ms": 5000,
                # Loopback: until the agent has measured the link, assume a fast one (the default 10 Mbit/s
                # and 20 ms make the plan's emulated edge-only split the fastest on a fast machine).
                "initial_bandwidth_mbps": 1000,
                "initial_rtt_ms": 1,
                "endpoint": {"address": endpoint},
                "sync": {
                    "mqtt": broker,
                    "outbox": {"path": str(tmp_path / "outbox.sqlite")},
                    "sampling": {"mode": "every_nth", "every_n": 2},
                    "plans_dir": str(tmp_path / "plans"),
                    "status_interval_s": 0.5,
                },
            }
        )
    )
    hub = spawn(["hub", "--config", str(hub_config)], tmp_path / "hub.log", "listening on")
    edge = spawn(["edge", "--config", str(edge_config)], tmp_path / "edge.log", "local endpoint listening")
    try:
        full = open_executor("onnxruntime", mobilenet_plan / "model.onnx")
        client = LocalClient(endpoint, timeout_s=60)
        rng = np.random.default_rng(0)
        sources = []
        for _ in range(6):
            x = rng.normal(size=(1, 3, 224, 224)).astype(np.float32)
            outputs, meta = client.infer({"input": x})
            sources.append(meta["source"])
            want = full.run({"input": x})["logits"]
            assert np.abs(outputs["logits"] - want).max() <= 1e-2 * np.abs(want).max()
        client.close()
        assert "hub" in sources  # split inference over MQTT, not only local answers
        deadline = time.monotonic() + 60
        while True:
            listing = subprocess.run(
                [*TANDEM, "fleet", "--config", str(hub_config), "--json"], capture_output=True, text=True, timeout=60
            )
            assert listing.returncode == 0, listing.stderr
            rows = {row["device"]: row for row in json.loads(listing.stdout)}
            if "cam-mqtt" in rows and rows["cam-mqtt"].get("records", 0) >= 6:
                break
            assert time.monotonic() < deadline, listing.stdout
            time.sleep(1)
    finally:
        stop(edge)
        stop(hub)
