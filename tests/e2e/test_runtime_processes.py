"""The runtime as users run it: `tandem partition`, `tandem hub`, `tandem edge`, `tandem demo`, as processes."""

from __future__ import annotations

import json
import os
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

from tandem.commands.demo_world import kind_of, predict
from tandem.contracts.plan import load_plan
from tandem.edge_agent.plan_view import load_agent_plan
from tandem.transport.envelope import Envelope, Kind, decode
from tandem.transport.zmq_channel import ZmqClient
from tests.e2e.conftest import free_port
from tests.fixtures.fuzz import hub_split

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
    split = hub_split(plan)  # a cut if the plan kept one, else cloud-only: a split the hub serves
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


def test_demo_shows_each_winner_the_plan_predicts_survives_a_hub_kill_and_agrees_with_the_unsplit_model(
    tmp_path: Path,
) -> None:
    """`tandem demo` from scratch (it partitions EfficientNet-Lite1 itself), on a shorter timeline.

    What each phase must show comes from the plan this run wrote: the demo derives
    its links from the plan's predictions, and the test predicts them again from
    the plan file, so nothing here depends on how fast this host is.
    """
    work = tmp_path / "demo"
    config = tmp_path / "demo.yaml"
    phases = [("cloud-only", "good"), ("cut", "drop"), ("edge-only", "deep"), ("cut", "back")]
    scenario = {
        "workdir": str(work),
        "agents": 1,
        "duration_s": 52,
        "deadline_ms": 800,
        "phases": [{"at_s": 10 * i, "winner": winner, "name": name} for i, (winner, name) in enumerate(phases)],
        "outage": {"at_s": 38, "duration_s": 5},
        "hub_port": free_port(),
        "endpoint_port": free_port(),
    }
    config.write_text(yaml.safe_dump(scenario))
    result = subprocess.run([*TANDEM, "demo", "--config", str(config)], capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    summary = json.loads((work / "demo-summary.json").read_text())
    records = summary["records"]
    assert summary["exactly_once"] and summary["failures"] == []

    splits = load_agent_plan(work / "plan", "int8+zstd").splits
    for verdict, (winner, name) in zip(summary["phases"], phases, strict=True):
        predicted = predict(splits, verdict["bandwidth_mbps"], verdict["rtt_ms"])
        assert verdict["phase"] == name and verdict["predicted"] == predicted.split_id
        assert kind_of(next(s for s in splits if s.split_id == predicted.split_id), splits) == winner
        start = verdict["at_s"] + 4  # settle_s
        end = min(verdict["at_s"] + 10, 38)
        used = Counter(r["split"] for r in records if start <= r["t"] < end and not r["degraded"])
        top = used.most_common(1)[0][0]
        assert kind_of(next(s for s in splits if s.split_id == top), splits) == winner, (name, used)

    outage = [r for r in records if 39 <= r["t"] < 43]
    assert outage and all(r["degraded"] and r["source"] == "fallback" for r in outage)
    back = summary["outage"]["hub_back_at_s"]  # when the restarted hub listened, however long that took here
    assert back >= 43 and any(r["source"] == "hub" for r in records if r["t"] >= back)  # back to split inference
    agreeing = sum(r["label"] == r["reference_label"] for r in records)
    assert agreeing / len(records) >= 0.99 and summary["top1_agreement"] == agreeing / len(records)
    assert summary["emulation_overrun"] == sum("emulation_overrun_ms" in r["timing"] for r in records)
    assert "Egyptian cat" in result.stdout and "top-1 agreement with the unsplit fp32 model" in result.stdout
    assert (work / "demo.png").stat().st_size > 10_000
