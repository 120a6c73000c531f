"""`tandem hub` as a process under the signals an operator sends: SIGTERM drains, SIGHUP reloads the plan list.

Callers are in flight when each signal arrives. SIGTERM: every request sent
is answered (its result, or ``shutting_down`` once the hub stops taking work),
none waits out its timeout, and the process exits 0. SIGHUP: a plan version
added to hub.yaml is served without a restart while a caller of the old one
sees nothing but results; a reload naming a broken folder changes nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tandem.contracts.plan import load_plan
from tandem.transport.envelope import Envelope, Kind
from tandem.transport.errors import ChannelTimeout
from tandem.transport.zmq_channel import ZmqClient
from tests.e2e.conftest import free_port
from tests.fixtures.fuzz import hub_split

pytestmark = pytest.mark.slow
TANDEM = [sys.executable, "-m", "tandem.cli"]


class HubProcess:
    """`tandem hub` on a config written from ``config``; its log in ``workdir``."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.config_path = workdir / "hub.yaml"
        self.write({"channels": [{"type": "zmq", "address": self.address}], "metrics": {"port": 0}, **config})
        self.log = workdir / "hub.log"
        with self.log.open("wb") as handle:
            self.process = subprocess.Popen([*TANDEM, "hub", "--config", str(self.config_path)], stdout=handle,
                                            stderr=handle, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.wait_for("listening on")
        self.metrics_port = int(re.findall(r"metrics on http://[^:]+:(\d+)/metrics", self.text())[0])

    def write(self, config: dict[str, Any]) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.process.poll() is None, self.text()[-3000:]
            assert time.monotonic() < deadline, f"no {needle!r} in:\n{self.text()[-3000:]}"
            time.sleep(0.05)

    def ready(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def hub_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[HubProcess] = []

    def make(config: dict[str, Any]) -> HubProcess:
        started.append(HubProcess(tmp_path, config))
        return started[-1]

    yield make
    for hub in started:
        hub.close()


class Caller(threading.Thread):
    """Asks one plan version's split again and again until told to stop or refused; records every outcome."""

    def __init__(self, address: str, plan_dir: Path, name: str) -> None:
        super().__init__(name=name, daemon=True)
        plan = load_plan(plan_dir, verify=False)
        split = hub_split(plan)
        self.feeds = {t.name: np.ones(t.shape, t.dtype) for t in split.crossing}
        self.ids = {"device_id": name, "plan_id": plan.plan_id, "plan_version": plan.version, "split_id": split.id}
        self.address = address
        self.outcomes: list[str] = []
        self.timeouts = 0
        self.stop_asking = threading.Event()

    def run(self) -> None:
        with ZmqClient(address=self.address, device_id=self.ids["device_id"]) as channel:
            while not self.stop_asking.is_set():
                request = Envelope.with_arrays(Kind.ACTIVATION, self.feeds, **self.ids)
                channel.send(request)
                try:
                    reply = channel.recv(timeout=20)
                except ChannelTimeout:
                    self.timeouts += 1
                    return
                assert reply.request_id == request.request_id
                outcome = "result" if reply.kind is Kind.RESULT else str(reply.meta.get("code"))
                self.outcomes.append(outcome)
                if outcome == "shutting_down":
                    return


def test_sigterm_answers_every_caller_in_flight_and_exits_cleanly(mobilenet_plan: Path, hub_factory: Any) -> None:
    hub = hub_factory({"plans": [str(mobilenet_plan)], "shutdown_grace_s": 20})
    callers = [Caller(hub.address, mobilenet_plan, f"cam-{i}") for i in range(6)]
    for caller in callers:
        caller.start()
    deadline = time.monotonic() + 60
    while min(len(c.outcomes) for c in callers) < 3:
        assert time.monotonic() < deadline, [c.outcomes for c in callers]
        time.sleep(0.02)
    hub.process.send_signal(signal.SIGTERM)
    assert hub.process.wait(timeout=40) == 0, hub.text()[-3000:]
    for caller in callers:
        caller.join(30)
    assert [c.timeouts for c in callers] == [0] * 6, "a caller waited out its timeout"
    for caller in callers:
        assert set(caller.outcomes) <= {"result", "shutting_down"}, caller.outcomes
        assert caller.outcomes[-1] == "shutting_down", caller.outcomes  # told, not left waiting
    text = hub.text()
    assert "stopping (SIGTERM): draining" in text and "stopped" in text


def test_sighup_serves_a_new_plan_version_without_a_restart_and_keeps_serving_on_a_bad_one(
    mobilenet_plan: Path, hub_factory: Any, tmp_path: Path
) -> None:
    v2 = tmp_path / "plan-v2"
    shutil.copytree(mobilenet_plan, v2)
    plan_yaml = v2 / "plan.yaml"
    plan_yaml.write_text(re.sub(r"^version: 1$", "version: 2", plan_yaml.read_text(), count=1, flags=re.MULTILINE))
    assert load_plan(v2).version == 2
    hub = hub_factory({"plans": [str(mobilenet_plan)]})
    old = Caller(hub.address, mobilenet_plan, "cam-old")
    old.start()
    while len(old.outcomes) < 3:
        time.sleep(0.02)
    hub.write({**hub.config, "plans": [str(mobilenet_plan), str(v2)]})
    hub.process.send_signal(signal.SIGHUP)
    hub.wait_for("reloaded")
    new = Caller(hub.address, v2, "cam-new")
    new.start()
    deadline = time.monotonic() + 60
    while len(new.outcomes) < 3:
        assert time.monotonic() < deadline and not new.timeouts, new.outcomes
        time.sleep(0.02)
    assert set(new.outcomes) == {"result"}, new.outcomes
    # A reload that names a folder that is not a plan: logged, nothing changes, both versions still served.
    broken = tmp_path / "not-a-plan"
    broken.mkdir()
    hub.write({**hub.config, "plans": [str(mobilenet_plan), str(broken)]})
    hub.process.send_signal(signal.SIGHUP)
    hub.wait_for("reload of")
    served = len(new.outcomes)
    while len(new.outcomes) < served + 3:
        time.sleep(0.02)
    old.stop_asking.set()
    new.stop_asking.set()
    old.join(30)
    new.join(30)
    assert set(old.outcomes) == {"result"} and old.timeouts == 0, old.outcomes  # not one degraded answer
    assert set(new.outcomes) == {"result"}, new.outcomes
    assert hub.ready() == 200 and hub.process.poll() is None
