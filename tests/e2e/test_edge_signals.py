"""`tandem edge` as a process: its status port, and SIGTERM with local callers in flight.

The hub it is configured for is not there, so every answer is the full model
run locally (degraded): /readyz must still say ready (the edge serves) and
report the hub unreachable. Callers keep asking through the local endpoint
when SIGTERM arrives; each must get an answer (a result, or ``shutting_down``
once the agent stops taking work), none may wait out its timeout, and the
process exits 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from tandem.contracts.plan import load_plan
from tandem.transport.envelope import Envelope, Kind
from tandem.transport.errors import ChannelTimeout
from tandem.transport.zmq_channel import ZmqClient
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.slow
TANDEM = [sys.executable, "-m", "tandem.cli"]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


class LocalCaller(threading.Thread):
    """Asks the edge's local endpoint for the model again and again until refused; records each outcome."""

    def __init__(self, address: str, inputs: dict[str, np.ndarray], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.address, self.inputs = address, inputs
        self.outcomes: list[str] = []
        self.timeouts = 0

    def run(self) -> None:
        with ZmqClient(address=self.address, device_id=self.name) as channel:
            while True:
                request = Envelope.with_arrays(Kind.ACTIVATION, self.inputs)
                channel.send(request)
                try:
                    reply = channel.recv(timeout=30)
                except ChannelTimeout:
                    self.timeouts += 1
                    return
                assert reply.request_id == request.request_id
                self.outcomes.append("result" if reply.kind is Kind.RESULT else str(reply.meta.get("code")))
                if self.outcomes[-1] != "result":
                    return


def test_edge_status_port_and_sigterm_with_callers_in_flight(mobilenet_plan: Path, tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    status_port = free_port()
    config = {
        "device_id": "cam-sig",
        "plan": str(mobilenet_plan),
        "codec": "raw",
        "executor": "onnxruntime",
        "channel": {"type": "zmq", "address": f"tcp://127.0.0.1:{free_port()}"},  # no hub there
        "endpoint": {"address": endpoint, "workers": 2},
        "status": {"port": status_port},
        "deadline_ms": 300,
        "shutdown_grace_s": 30,
    }
    (tmp_path / "edge.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / "edge.log"
    with log.open("wb") as handle:
        process = subprocess.Popen([*TANDEM, "edge", "--config", str(tmp_path / "edge.yaml")], stdout=handle,
                                   stderr=handle, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "local endpoint listening on" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        status, body = get(status_port, "/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["ready"] is True, body
        assert ready["plan"].endswith("@1") and ready["endpoint"] == endpoint
        assert get(status_port, "/healthz") == (200, "ok\n") and get(status_port, "/x")[0] == 404
        plan = load_plan(mobilenet_plan, verify=False)
        inputs = {t.name: np.zeros(t.shape, t.dtype) for t in plan.model.inputs}
        callers = [LocalCaller(endpoint, inputs, f"app-{i}") for i in range(3)]
        for caller in callers:
            caller.start()
        while min(len(c.outcomes) for c in callers) < 2:
            assert time.monotonic() < deadline + 120, [c.outcomes for c in callers]
            time.sleep(0.02)
        _, metrics = get(status_port, "/metrics")
        answered = sum(float(v) for v in re.findall(r'tandem_edge_answers_total\{[^}]*\} (\S+)', metrics))
        assert answered >= 6, metrics[:2000]
        assert 'tandem_edge_hub_up{device="cam-sig"} 0.0' in metrics  # reported, and ready all the same
        assert json.loads(get(status_port, "/readyz")[1])["hub_reachable"] is False
        process.send_signal(signal.SIGHUP)  # survived, and said why nothing changed
        deadline = time.monotonic() + 30
        while "SIGHUP: the edge reloads nothing in place" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
        for caller in callers:
            caller.join(30)
        assert [c.timeouts for c in callers] == [0, 0, 0], "a local caller waited out its timeout"
        for caller in callers:
            assert set(caller.outcomes) <= {"result", "shutting_down"}, caller.outcomes
            assert caller.outcomes[-1] == "shutting_down", caller.outcomes
        assert "stopping (SIGTERM): draining" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
