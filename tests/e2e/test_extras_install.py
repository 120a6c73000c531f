"""Installs that have only their extra: the built wheel in fresh venvs with ``[edge]`` and with ``[cloud]`` alone.

Each serves a real plan as a process (``tandem hub`` from the cloud venv,
``tandem edge`` from the edge venv), and ``tandem --help`` in each offers
exactly the commands whose packages that install has: every offered command
starts (its ``--help`` imports it), every other is named as not available.
The dev venv has everything, so only a venv like a user's shows a missing
dependency (the hub once crashed on ``import onnx`` in a ``[cloud]`` install).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from tandem.cli import COMMAND_MODULES
from tests.e2e.conftest import free_port
from tests.layout import build_wheel

pytestmark = pytest.mark.slow
# tandem/cli.py's COMMAND_MODULES is the one list of commands; what each install should offer is the expectation.
COMMANDS = {command for commands, _, _ in COMMAND_MODULES.values() for command in commands}
OFFERED = {
    # prometheus-client is in the edge extra (the edge's /metrics), so the store tools run there too.
    "edge": {"build-engine", "edge", "check-config", "keys", "fleet", "publish"},
    "cloud": {"build-engine", "edge", "check-config", "keys", "hub", "fleet", "publish"},
}


def _venv(root: Path, wheel: Path, extra: str) -> Path:
    """A fresh venv (no system packages) with ``wheel[extra]``; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    bin_dir = root / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*pip, f"{wheel}[{extra}]"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return bin_dir


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    wheel = build_wheel(tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel"))
    return {extra: _venv(tmp_path_factory.mktemp(f"venv-{extra}"), wheel, extra) for extra in OFFERED}


@pytest.fixture(scope="module")
def digits_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real plan, partitioned with the dev install (partitioning is the workstation's job).

    Its edge is emulated 5000x slower than this machine, so cloud-only wins and
    the answers come through the [cloud] venv's hub.
    """
    folder = tmp_path_factory.mktemp("plan")
    out, config = folder / "digits", folder / "partition.yaml"
    config.write_text("edge: {emulation_factor: 5000}\n")
    command = [sys.executable, "-m", "tandem.cli", "partition", "digits_cnn", "--out", str(out), "--no-progress",
               "--config", str(config)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("extra", sorted(OFFERED))
def test_help_offers_what_the_install_can_run(venvs: dict[str, Path], extra: str) -> None:
    tandem = str(venvs[extra] / "tandem")
    shown = subprocess.run([tandem, "--help"], capture_output=True, text=True, timeout=120, check=True).stdout
    listed = set(re.findall(r"^    (\S+)", shown, re.M))
    assert listed == OFFERED[extra], shown
    unavailable = " ".join(shown.split("not available in this install:", 1)[-1].split())
    for command in COMMANDS - OFFERED[extra]:
        assert f"{command} (needs" in unavailable, (command, shown)
    for command in OFFERED[extra]:  # each one imports in this install
        run = subprocess.run([tandem, command, "--help"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (command, run.stderr[-2000:])


def _start(command: list[str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=handle, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while ready not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    return process


@pytest.fixture
def served(venvs: dict[str, Path], digits_plan: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``tandem hub`` from the [cloud] venv and ``tandem edge`` from the [edge] venv serving the digits plan."""
    hub_port, endpoint_port = free_port(), free_port()
    hub_yaml, edge_yaml = tmp_path / "hub.yaml", tmp_path / "edge.yaml"
    address = f"tcp://127.0.0.1:{hub_port}"
    hub_yaml.write_text(yaml.safe_dump(
        {"plans": [str(digits_plan)], "channels": [{"type": "zmq", "address": address}], "metrics": {"port": 0}}
    ))  # fmt: skip
    edge_yaml.write_text(yaml.safe_dump({
        "device_id": "cam-1", "plan": str(digits_plan), "codec": "raw", "channel": {"type": "zmq", "address": address},
        "endpoint": {"address": f"tcp://127.0.0.1:{endpoint_port}"}, "deadline_ms": 10_000,
        "status": {"port": 0},  # /metrics needs prometheus-client: part of the edge extra
    }))  # fmt: skip
    hub = _start([str(venvs["cloud"] / "tandem"), "hub", "--config", str(hub_yaml)], tmp_path / "hub.log", "listening")
    edge = _start(
        [str(venvs["edge"] / "tandem"), "edge", "--config", str(edge_yaml)], tmp_path / "edge.log", "local endpoint"
    )
    yield f"tcp://127.0.0.1:{endpoint_port}", tmp_path
    for process in (edge, hub):
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_an_edge_only_and_a_cloud_only_install_serve_a_real_plan(served: tuple[str, Path]) -> None:
    from tandem.edge_agent.endpoint import LocalClient
    from tandem.models.digits import test_set

    endpoint, logs = served
    images, _ = test_set()
    client = LocalClient(endpoint, name="app", timeout_s=60)
    try:
        deadline = time.monotonic() + 60
        while True:  # until the edge has measured its link and sends to the hub
            outputs, meta = client.infer({"input": images[:1]})
            if meta["source"] == "hub" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        client.close()
    assert meta["source"] == "hub" and not meta["degraded"], (meta, (logs / "edge.log").read_text()[-2000:])
    assert meta["split"] == "cloud-only"
    assert outputs["logits"].shape == (1, 10) and np.isfinite(outputs["logits"]).all()
    assert "loaded plan" in (logs / "hub.log").read_text()
    port = re.findall(r"status on http://[^:]+:(\d+)/metrics", (logs / "edge.log").read_text())[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert 'tandem_edge_answers_total{device="cam-1",source="hub"}' in response.read().decode()
