"""The runtime as users run it: `tandem partition`, `tandem hub`, `tandem edge`, `tandem demo`, as processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import yaml
import zmq

from partitioner.plan import load_plan
from tests.e2e.conftest import free_port
from transport.envelope import Envelope, Kind, decode
from transport.zmq_channel import ZmqClient

pytestmark = pytest.mark.slow
TANDEM = [sys.executable, "-m", "tandem.cli"]


@pytest.fixture
def hub_process(mobilenet_plan: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "plans": [str(mobilenet_plan)],
                "channels": [{"type": "zmq", "address": f"tcp://127.0.0.1:{port}"}],
                "metrics": {"port": 0},
            }
        )
    )
    log = tmp_path / "hub.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*TANDEM, "hub", "--config", str(config)], stdout=handle, stderr=handle,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while "listening on" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    yield f"tcp://127.0.0.1:{port}"
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
    assert "stopping" in log.read_text()


def test_hub_process_names_bad_messages_and_keeps_serving(mobilenet_plan: Path, hub_process: str) -> None:
    plan = load_plan(mobilenet_plan)
    split = next(s for s in plan.splits if s.kind == "split")
    context = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.connect(hub_process)
    try:
        raw.send_multipart([msgpack.packb({"v": 1, "kind": "activation", "id": "x1", "tensors": "lots"})])
        assert raw.poll(20_000)
        error = decode(raw.recv_multipart())
        assert (error.kind, error.meta["code"], error.meta["field"]) == (Kind.ERROR, "malformed_header", "tensors")
        assert error.meta["message"] == "tensors: expected a list, got 'lots'"
    finally:
        raw.close(linger=0)
        context.term()
    crossing = {t.name: np.zeros(t.shape, t.dtype) for t in split.crossing}
    ids = {"plan_id": plan.plan_id, "plan_version": 1, "device_id": "cam-9"}
    with ZmqClient(address=hub_process, device_id="cam-9") as edge:
        edge.send(Envelope.with_arrays(Kind.ACTIVATION, crossing, split_id="no-such-split", **ids))
        refused = edge.recv(timeout=30)
        assert refused.meta["code"] == "unknown_split"
        assert f"plan {plan.plan_id!r} has no split 'no-such-split'" in refused.meta["message"]
        wrong = {name: np.zeros((1, 3), np.float32) for name in crossing}
        edge.send(Envelope.with_arrays(Kind.ACTIVATION, wrong, split_id=split.id, **ids))
        assert edge.recv(timeout=30).meta["code"] == "bad_input"
        edge.send(Envelope.with_arrays(Kind.ACTIVATION, crossing, split_id=split.id, **ids))
        answer = edge.recv(timeout=30)
    assert answer.kind is Kind.RESULT and answer.arrays()["logits"].shape == (1, 1000)


def test_demo_switches_split_survives_a_hub_kill_and_matches_the_unsplit_model(
    mobilenet_plan: Path, tmp_path: Path
) -> None:
    work = tmp_path / "demo"
    shutil.copytree(mobilenet_plan, work / "plan")
    config = tmp_path / "demo.yaml"
    scenario = {
        "model": "mobilenet_v2",
        "workdir": str(work),
        "codec": "int8+zstd",
        "agents": 1,
        "rate_hz": 3,
        "duration_s": 36,
        "deadline_ms": 800,
        "phases": [
            {"at_s": 0, "bandwidth_mbps": 100, "name": "fast"},
            {"at_s": 12, "bandwidth_mbps": "auto", "name": "slow"},
        ],
        "outage": {"at_s": 24, "duration_s": 5},
        "hub_port": free_port(),
        "endpoint_port": free_port(),
    }
    config.write_text(yaml.safe_dump(scenario))
    result = subprocess.run(
        [*TANDEM, "demo", "--config", str(config), "--reuse-plan"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((work / "demo-summary.json").read_text())
    records = summary["records"]
    assert summary["exactly_once"] and len(records) >= 80
    tolerance = load_plan(work / "plan").splits[1].codec("int8+zstd").tolerance
    assert summary["max_rel_error"] <= tolerance

    def splits_between(start: float, end: float) -> Counter[str]:
        return Counter(r["split"] for r in records if start <= r["t"] < end and r["source"] == "hub")

    fast, slow = splits_between(4, 12), splits_between(18, 24)
    assert fast.most_common(1)[0][0] == "cloud-only"
    assert slow and slow.most_common(1)[0][0] not in ("cloud-only", "edge-only")  # moved to a cut
    outage = [r for r in records if 25 <= r["t"] < 29]
    assert outage and all(r["degraded"] and r["source"] == "fallback" for r in outage)
    assert any(r["source"] == "hub" for r in records if r["t"] >= 31)  # back to split inference
    assert (work / "demo.png").stat().st_size > 10_000
